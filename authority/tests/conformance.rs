//! Runs the public conformance corpus (`../shared/conformance`) against the authority over real
//! loopback sockets: every case over UDP (retrying over TCP on TC), TCP-marked ones over TCP.
//! Autopath cases belong to the node agent and upstream cases need a resolver; they are listed
//! as skipped with the reason.

mod support;

use nodedns_testsupport::client::{self, build, tcp_raw, udp_raw};
use nodedns_testsupport::corpus::{Corpus, check};
use nodedns_testsupport::shared_dir;

/// The assumed configuration of the corpus README.
const REVERSE: [&str; 6] =
    ["10.0.0.0/16", "10.240.0.0/16", "172.0.0.0/16", "1234:abcd::/64", "10::/64", "5678:abcd::/64"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_corpus() {
    let dir = shared_dir().join("conformance");
    let corpus = Corpus::load(&dir.join("cases.yaml")).expect("corpus loads");
    let cluster = dir.join("cluster.yaml");
    let cluster = cluster.to_str().expect("utf-8 path");
    let mut servers = std::collections::HashMap::new();
    for mode in ["verified", "insecure", "disabled"] {
        let mut flags = vec!["--cluster-file", cluster, "--pods", mode, "--ttl", "5"];
        for c in REVERSE {
            flags.extend(["--reverse-cidr", c]);
        }
        servers.insert(mode.to_owned(), support::start(&flags).await);
    }

    let (mut passed, mut failed, mut skipped) = (0, Vec::new(), Vec::new());
    for (i, case) in corpus.cases.iter().enumerate() {
        let eff = corpus.effective(case);
        if eff.autopath {
            skipped.push(format!("{} (autopath runs in the node agent)", case.id));
            continue;
        }
        if case.requires.iter().any(|r| r == "upstream") {
            skipped.push(format!("{} (needs an upstream resolver)", case.id));
            continue;
        }
        let server =
            servers.get(&eff.pods).unwrap_or_else(|| panic!("{}: unknown pods mode {}", case.id, eff.pods));
        let q = build(&case.qname, &case.qtype, 0x1000 + i as u16, Some(1232)).expect("query builds");
        let response = if eff.tcp {
            tcp_raw(server.dns, &q.bytes).await
        } else {
            match udp_raw(server.dns, client::loopback_any(server.dns), &q.bytes).await {
                Ok(r) if r.len() > 2 && r[2] & 0x02 != 0 => tcp_raw(server.dns, &q.bytes).await,
                other => other,
            }
        };
        let verdict = match response {
            Ok(r) => check(case, &q.bytes, q.question_len, &r),
            Err(e) => {
                failed.push(format!(
                    "{} [{}]: no response: {e:#}",
                    case.id,
                    if eff.must { "must" } else { "should" }
                ));
                continue;
            }
        };
        for w in &verdict.warnings {
            eprintln!("warning: {}: {w}", case.id);
        }
        if verdict.failures.is_empty() {
            passed += 1;
        } else {
            failed.push(format!(
                "{} [{}] {} {}: {}",
                case.id,
                if eff.must { "must" } else { "should" },
                case.qname,
                case.qtype,
                verdict.failures.join("; ")
            ));
        }
    }
    eprintln!("conformance: {passed} passed, {} failed, {} skipped", failed.len(), skipped.len());
    for s in &skipped {
        eprintln!("  skipped {s}");
    }
    for s in servers.into_values() {
        s.stop().await;
    }
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
    assert!(passed >= 50, "only {passed} cases ran");
}
