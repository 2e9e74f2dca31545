//! Custom records reach agents: an authority store holding custom records (`--custom-records`)
//! behind the real gRPC service on loopback, an agent subscribed to it, and an upstream that
//! answers every name with 192.0.2.1. Names in the cluster zone and in the custom zone are
//! answered by the authority, never the upstream, because Subscribe announced the zone; a zone
//! added live is routed to the authority once its Update arrives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use nodedns_agent::authority_client::AuthorityLink;
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_testsupport::client::{build, udp_raw};
use nodedns_testsupport::upstream::FakeUpstream;
use nodedns_zone::file::parse_cluster;
use nodedns_zone::{ClusterStore, ZoneConfig, parse_custom};
use tokio_util::sync::CancellationToken;

const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns1}\nspec: {clusterIP: 10.0.0.1}\n";

const CUSTOM: &str = "registry.cluster.local. A 10.9.0.1\n\
                      $ORIGIN corp.example.\n\
                      mail A 192.0.2.25\n\
                      @    MX 10 mail\n";

/// Cancels a task's token when dropped (a failed assertion must not leave the agent running).
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn records(store: &ClusterStore, text: &str) -> Arc<nodedns_zone::CustomRecords> {
    let domain = store.config().cluster_domain.clone();
    Arc::new(parse_custom(text, &domain, 5).expect("test records parse"))
}

/// The authority's gRPC service over `store`, on a port-0 loopback listener.
fn serve(store: Arc<ClusterStore>, stop: &CancellationToken) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown =
        nodedns_grpc::Shutdown { draining: stop.clone(), stop: stop.clone(), lameduck: Duration::ZERO };
    let service = nodedns_grpc::Service::new(store, nodedns_grpc::TransferAcl::default(), shutdown);
    tokio::spawn(nodedns_grpc::serve_grpc(listener, service, stop.clone()));
    addr
}

/// Waits (at most 20 s) until the agent has applied the store's current revision.
async fn caught_up(link: &AuthorityLink, store: &ClusterStore) {
    let revision = store.revision();
    tokio::time::timeout(Duration::from_secs(20), link.applied().wait_for(|r| *r == revision))
        .await
        .unwrap_or_else(|_| panic!("the agent did not reach revision {revision} within 20 s"))
        .unwrap();
}

async fn ask(server: SocketAddr, name: &str, qtype: &str) -> Message {
    let q = build(name, qtype, 4242, None).unwrap().bytes;
    let msg = Message::from_vec(&udp_raw(server, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap()).unwrap();
    assert_eq!(msg.metadata.id, 4242);
    msg
}

fn data(msg: &Message) -> Vec<String> {
    msg.answers.iter().map(|r| r.data.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_zones_are_announced_and_routed_to_the_authority_not_the_upstream() {
    let up = FakeUpstream::start().await.unwrap();
    let store = ClusterStore::new(ZoneConfig::default());
    store.replace(parse_cluster(CLUSTER).unwrap().objects).unwrap();
    store.set_custom(records(&store, CUSTOM)).unwrap();
    let stop = CancellationToken::new();
    let _stop_authority = StopOnDrop(stop.clone());
    let authority = format!("http://{}", serve(Arc::clone(&store), &stop));

    let upstream = up.addr.to_string();
    let argv = [
        "nodedns-agent",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--authority",
        &authority,
        "--node-name",
        "node-a",
        "--upstream",
        &upstream,
    ];
    let config = Config::resolve(&Args::try_parse_from(argv).unwrap()).expect("test config resolves");
    let listeners = Listeners::bind(&config).expect("port-0 sockets bind");
    let dns = listeners.dns_addrs()[0];
    let agent = Agent::new(config);
    let link = agent.authority();
    let shutdown = CancellationToken::new();
    let _stop_agent = StopOnDrop(shutdown.clone());
    let task = tokio::spawn(agent.run(listeners, shutdown.clone()));
    caught_up(&link, &store).await;
    let zones = link.view().zones.clone();
    assert!(zones.contains(&"corp.example.".to_owned()), "Subscribe announced the custom zone: {zones:?}");

    // A custom name in the cluster zone, and names of the custom zone: the authority's answers.
    let msg = ask(dns, "registry.cluster.local.", "A").await;
    assert_eq!(data(&msg), ["10.9.0.1"]);
    assert!(msg.metadata.authoritative, "the authority's answer, passed through");
    let msg = ask(dns, "mail.corp.example.", "A").await;
    assert_eq!(data(&msg), ["192.0.2.25"], "not the upstream's 192.0.2.1");
    assert!(msg.metadata.authoritative);
    assert_eq!(data(&ask(dns, "corp.example.", "MX").await), ["10 mail.corp.example."]);
    let nx = ask(dns, "missing.corp.example.", "A").await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain, "{nx}");
    assert!(
        nx.authorities
            .iter()
            .any(|r| matches!(r.data, RData::SOA(_)) && r.name.to_ascii() == "corp.example.")
    );
    assert_eq!(up.queries(), 0, "no custom name went upstream");

    // Before its zone exists a name goes upstream (and is cached); once the Update announces the
    // zone, its names go to the authority and the upstream's cached answers for them are gone. The same Update names a changed record, evicting its cached answer
    // (TTL 5 s, longer than this test).
    assert_eq!(data(&ask(dns, "old.other.test.", "A").await), ["192.0.2.1"]);
    assert_eq!(up.queries(), 1);
    let more =
        format!("{}$ORIGIN other.test.\nwww A 192.0.2.80\n", CUSTOM.replace("192.0.2.25", "192.0.2.26"));
    store.set_custom(records(&store, &more)).unwrap();
    caught_up(&link, &store).await;
    assert!(link.view().zones.contains(&"other.test.".to_owned()));
    assert_eq!(data(&ask(dns, "www.other.test.", "A").await), ["192.0.2.80"]);
    assert_eq!(data(&ask(dns, "mail.corp.example.", "A").await), ["192.0.2.26"], "the cached answer went");
    let nx = ask(dns, "new.other.test.", "A").await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain, "{nx}");
    // What the upstream answered for the zone's names before it existed went with its arrival.
    let old = ask(dns, "old.other.test.", "A").await;
    assert_eq!(old.metadata.response_code, ResponseCode::NXDomain, "not the upstream's cached answer: {old}");
    assert_eq!(up.queries(), 1, "the new zone went to the authority");

    shutdown.cancel();
    let r = task.await.expect("agent task panicked");
    assert!(r.is_ok(), "{r:?}");
}
