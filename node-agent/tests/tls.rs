//! The gRPC link over mutual TLS, over real sockets: an agent with its certificate resolves cluster
//! names through an authority that requires one; clients without a certificate, with one from
//! another CA, or in plain text are refused; a rotated server certificate applies to the next
//! connection without a restart; and bad TLS settings stop the agent naming the flag.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RData;
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_common::tls::{ReloadingServerConfig, ServerTlsFiles, TlsFile};
use nodedns_proto::v1::SubscribeRequest;
use nodedns_proto::v1::authority_client::AuthorityClient;
use nodedns_testsupport::client::ask;
use nodedns_testsupport::tls::{CertFiles, TestCa};
use nodedns_testsupport::{TempDir, shared_dir};
use nodedns_zone::file_source::FileSource;
use nodedns_zone::{ClusterStore, ZoneConfig};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The authority's gRPC service over the conformance cluster, served over TLS with `server`'s
/// certificate, requiring client certificates from `client_ca` when given.
struct TlsAuthority {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl TlsAuthority {
    fn start(dir: &TempDir, server: &CertFiles, client_ca: Option<&TestCa>) -> Self {
        let cluster = dir.write(
            "cluster.yaml",
            &std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap(),
        );
        let store = ClusterStore::new(ZoneConfig::default());
        FileSource::new(cluster, Arc::clone(&store)).load().unwrap();
        let files = ServerTlsFiles {
            cert: TlsFile::new("tls-cert", &server.cert),
            key: TlsFile::new("tls-key", &server.key),
            client_ca: client_ca.map(|ca| TlsFile::new("tls-client-ca", &ca.cert)),
        };
        let tls = Arc::new(ReloadingServerConfig::new(files).expect("test certificates load"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let shutdown =
            nodedns_grpc::Shutdown { draining: stop.clone(), stop: stop.clone(), lameduck: Duration::ZERO };
        let service = nodedns_grpc::Service::new(store, nodedns_grpc::TransferAcl::default(), shutdown);
        tokio::spawn(nodedns_grpc::serve_grpc_with(listener, service, Some(tls), stop.clone()));
        Self { addr, stop }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsAuthority {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Opens a Subscribe stream as an agent would, with `tls` (or in plain text), and returns whether
/// the authority accepted it.
async fn subscribe(url: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned()).unwrap().connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut client = AuthorityClient::new(channel);
    let mut stream = client
        .subscribe(SubscribeRequest { node_name: "node-a".into(), resume_from: 0 })
        .await
        .map_err(|e| format!("subscribe: {e}"))?
        .into_inner();
    // The first message (the snapshot) proves the stream is really up.
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(_))) => Ok(()),
        other => Err(format!("no snapshot: {other:?}")),
    }
}

fn client_tls(ca: &TestCa, identity: Option<&CertFiles>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca.cert).unwrap()))
        .domain_name("nodedns-authority.kube-system.svc");
    if let Some(id) = identity {
        tls = tls
            .identity(Identity::from_pem(std::fs::read(&id.cert).unwrap(), std::fs::read(&id.key).unwrap()));
    }
    tls
}

const SERVER_NAMES: [&str; 2] = ["nodedns-authority.kube-system.svc", "127.0.0.1"];

#[tokio::test]
async fn only_agents_with_a_certificate_from_the_client_ca_are_served() {
    let dir = TempDir::new("mtls");
    let ca = TestCa::new(&dir, "cluster");
    let other = TestCa::new(&dir, "other");
    let server = ca.server("authority", &SERVER_NAMES);
    let authority = TlsAuthority::start(&dir, &server, Some(&ca));
    let agent = ca.client("agent", "node-a");
    let stranger = other.client("stranger", "node-a");

    subscribe(&authority.url(), Some(client_tls(&ca, Some(&agent))))
        .await
        .expect("an agent with a certificate is served");
    let no_cert = subscribe(&authority.url(), Some(client_tls(&ca, None))).await;
    assert!(no_cert.is_err(), "a client without a certificate was served");
    let wrong_ca = subscribe(&authority.url(), Some(client_tls(&ca, Some(&stranger)))).await;
    assert!(wrong_ca.is_err(), "a client whose certificate another CA signed was served");
    let plain = subscribe(&format!("http://{}", authority.addr), None).await;
    assert!(plain.is_err(), "a plain-text client was served by a TLS authority");
    // A server certificate the agent's CA did not sign: the agent refuses the authority.
    let impostor = TlsAuthority::start(&dir, &other.server("impostor", &SERVER_NAMES), None);
    let err = subscribe(&impostor.url(), Some(client_tls(&ca, Some(&agent)))).await;
    assert!(err.is_err(), "the agent trusted an authority its CA did not sign");
}

#[tokio::test]
async fn a_rotated_server_certificate_applies_to_the_next_connection() {
    let dir = TempDir::new("mtls-rotate");
    let old_ca = TestCa::new(&dir, "old");
    let new_ca = TestCa::new(&dir, "new");
    let server = old_ca.server("authority", &SERVER_NAMES);
    let authority = TlsAuthority::start(&dir, &server, None);
    subscribe(&authority.url(), Some(client_tls(&old_ca, None)))
        .await
        .expect("served with the first certificate");
    assert!(subscribe(&authority.url(), Some(client_tls(&new_ca, None))).await.is_err());

    // The Secret is rotated: the same paths now hold a certificate the new CA signed.
    let rotated = new_ca.server("authority", &SERVER_NAMES);
    assert_eq!(rotated.cert, server.cert, "rotation rewrites the same files");
    subscribe(&authority.url(), Some(client_tls(&new_ca, None)))
        .await
        .expect("the next connection uses the new certificate");

    // A half-written rotation (a key that does not match) keeps the last good certificate.
    std::fs::copy(&old_ca.server("unrelated", &SERVER_NAMES).key, &server.key).unwrap();
    subscribe(&authority.url(), Some(client_tls(&new_ca, None)))
        .await
        .expect("the last good certificate is kept");
}

fn config(argv: &[&str]) -> Result<Config, String> {
    let base =
        ["nodedns-agent", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:53", "--node-name", "node-a"];
    let args = Args::try_parse_from(base.iter().chain(argv)).map_err(|e| e.to_string())?;
    Config::resolve(&args).map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_agent_resolves_cluster_names_over_mutual_tls() {
    let dir = TempDir::new("mtls-agent");
    let ca = TestCa::new(&dir, "cluster");
    let authority = TlsAuthority::start(&dir, &ca.server("authority", &SERVER_NAMES), Some(&ca));
    let agent = ca.client("agent", "node-a");
    let (ca_path, cert, key) =
        (ca.cert.to_str().unwrap(), agent.cert.to_str().unwrap(), agent.key.to_str().unwrap());
    let url = authority.url();
    let config = config(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--authority",
        &url,
        "--tls-ca",
        ca_path,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--tls-server-name",
        SERVER_NAMES[0],
    ])
    .unwrap();
    let listeners = Listeners::bind(&config).unwrap();
    let dns = listeners.dns_addrs()[0];
    let agent = Agent::new(config);
    let link = agent.authority();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(listeners, stop.clone()));
    tokio::time::timeout(Duration::from_secs(20), link.connected().wait_for(|c| *c))
        .await
        .expect("the agent connects over mutual TLS within 20 s")
        .unwrap();
    let (msg, _) = ask(dns, "svc1.testns.svc.cluster.local.", "A").await.unwrap();
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    let addrs: Vec<String> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(addrs, ["10.0.0.1"]);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[test]
fn bad_tls_settings_stop_the_agent_naming_the_flag() {
    let dir = TempDir::new("mtls-config");
    let ca = TestCa::new(&dir, "cluster");
    let agent = ca.client("agent", "node-a");
    let garbage = dir.write("garbage.pem", "not a certificate\n");
    let (ca_path, cert, key, garbage) = (
        ca.cert.to_str().unwrap(),
        agent.cert.to_str().unwrap(),
        agent.key.to_str().unwrap(),
        garbage.to_str().unwrap(),
    );
    let https = "https://127.0.0.1:8053";
    for (argv, starts) in [
        (vec!["--authority", https], "tls-ca: "),
        (vec!["--authority", "http://127.0.0.1:8053", "--tls-ca", ca_path], "tls-ca: "),
        (vec!["--authority", https, "--tls-ca", ca_path, "--tls-cert", cert], "tls-key: "),
        (vec!["--authority", https, "--tls-ca", garbage], "tls-ca: "),
        (
            vec!["--authority", https, "--tls-ca", ca_path, "--tls-cert", garbage, "--tls-key", key],
            "tls-cert: ",
        ),
        (
            vec![
                "--authority",
                https,
                "--tls-ca",
                ca_path,
                "--tls-cert",
                cert,
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            "tls-key: ",
        ),
    ] {
        let err = config(&argv).expect_err(&format!("{argv:?} was accepted"));
        assert!(err.starts_with(starts), "{argv:?}: {err}");
    }
    let ok =
        config(&["--authority", https, "--tls-ca", ca_path, "--tls-cert", cert, "--tls-key", key]).unwrap();
    let tls = ok.authority_tls.expect("TLS settings kept");
    assert!(tls.identity.is_some() && tls.server_name.is_none());
}
