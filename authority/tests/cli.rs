//! The binary's contract with operators: bad input exits non-zero with one line naming the cause.

use std::process::{Command, Stdio};

fn authority(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodedns-authority"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fixture() -> String {
    nodedns_testsupport::shared_dir().join("conformance/cluster.yaml").to_str().unwrap().to_owned()
}

#[test]
fn bad_flags_files_and_ports_exit_non_zero_naming_the_cause() {
    let (code, err) = authority(&["--ttl", "soon"]);
    assert_eq!(code, 2);
    assert!(err.contains("--ttl") && err.trim().lines().count() == 1, "one line naming the flag: {err}");

    let (code, err) = authority(&[
        "--cluster-file",
        "/nonexistent/cluster.yaml",
        "--dns-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/cluster.yaml")
            && err.lines().last().unwrap().starts_with("nodedns-authority: error:"),
        "{err}"
    );

    let (code, err) =
        authority(&["--cluster-file", &fixture(), "--pods", "sometimes", "--dns-listen", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("pods: \"sometimes\""), "{err}");

    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let (code, err) =
        authority(&["--cluster-file", &fixture(), "--dns-listen", &port, "--admin-listen", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("cannot bind DNS UDP {port}")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let dir = nodedns_testsupport::TempDir::new("cli");
    let cfg = dir.write("config.yaml", "ttl: 5\nupstreams: [1.1.1.1]\n");
    let (code, err) = authority(&["--config", cfg.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("upstreams"), "{err}");

    let bad = dir.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {clusterIP: nope}\n",
    );
    let (code, err) = authority(&["--cluster-file", bad.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("Service a/s: spec.clusterIP"), "{err}");

    let (code, _) = authority(&["--cluster-file", &fixture(), "--check-config"]);
    assert_eq!(code, 0);

    // gRPC TLS: a missing half of the pair, and a file that is not PEM, name their flag.
    let ca = nodedns_testsupport::tls::TestCa::new(&dir, "cli");
    let server = ca.server("authority", &["localhost"]);
    let (cert, key) = (server.cert.to_str().unwrap(), server.key.to_str().unwrap());
    let garbage = dir.write("garbage.pem", "not PEM\n");
    let fixture = fixture();
    for (flags, names) in [
        (vec!["--tls-cert", cert], "tls-key: "),
        (vec!["--tls-client-ca", ca.cert.to_str().unwrap()], "tls-client-ca: "),
        (vec!["--tls-cert", garbage.to_str().unwrap(), "--tls-key", key], "tls-cert: "),
        (vec!["--tls-cert", cert, "--tls-key", cert], "tls-key: "),
    ] {
        let mut args = vec!["--cluster-file", &fixture, "--check-config"];
        args.extend(flags.iter().copied());
        let (code, err) = authority(&args);
        assert_eq!(code, 1, "{flags:?}: {err}");
        assert!(err.contains(names), "{flags:?}: {err}");
    }
    let (code, err) =
        authority(&["--cluster-file", &fixture, "--check-config", "--tls-cert", cert, "--tls-key", key]);
    assert_eq!(code, 0, "{err}");
}
