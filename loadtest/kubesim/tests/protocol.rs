//! The fake API server speaks the protocol a real client expects, checked over raw HTTP/1.1.

use std::time::Duration;

use nodedns_kubesim::{FakeApi, Kind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn svc(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns", "labels": labels},
           "spec": {"clusterIP": "10.0.0.1"}})
}

async fn get(api: &FakeApi, path: &str) -> Value {
    let body = reqwest_like(api, path).await;
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// GET with `Connection: close`, returning the body (de-chunked).
async fn reqwest_like(api: &FakeApi, path: &str) -> String {
    let mut s = TcpStream::connect(api.url().trim_start_matches("http://")).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// Reads watch lines from an open stream until `want` lines have arrived.
struct Watch(TcpStream, String);

impl Watch {
    async fn open(api: &FakeApi, query: &str) -> Watch {
        let mut s = TcpStream::connect(api.url().trim_start_matches("http://")).await.unwrap();
        s.write_all(
            format!("GET /api/v1/services?watch=true&{query} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        Watch(s, String::new())
    }

    /// The next event of the given type; other lines (chunk sizes, other events) are skipped.
    async fn next(&mut self, type_: &str) -> Value {
        loop {
            // Complete lines that hold a JSON event (chunk-size lines and headers are skipped).
            while let Some(end) = self.1.find('\n') {
                let line: String = self.1.drain(..=end).collect();
                let line = line.trim();
                if line.starts_with('{')
                    && let Ok(event) = serde_json::from_str::<Value>(line)
                    && event["type"] == type_
                {
                    return event;
                }
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(5), self.0.read(&mut buf))
                .await
                .expect("event within 5s")
                .unwrap();
            assert!(n > 0, "stream ended while waiting for {type_}");
            self.1.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

#[tokio::test]
async fn lists_page_and_filter() {
    let api = FakeApi::start().await.unwrap();
    for i in 0..5 {
        api.apply(svc(&format!("s{i}"), json!({"tier": if i % 2 == 0 { "web" } else { "db" }})));
    }
    let first = get(&api, "/api/v1/services?limit=2").await;
    assert_eq!(first["kind"], "ServiceList");
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let second = get(&api, &format!("/api/v1/services?limit=2&continue={token}")).await;
    assert_eq!(second["items"][0]["metadata"]["name"], "s2", "the next page resumes after the last item");
    let web = get(&api, "/api/v1/namespaces/ns/services?labelSelector=tier%3Dweb").await;
    assert_eq!(web["items"].as_array().unwrap().len(), 3);
    assert_eq!(get(&api, "/api/v1/namespaces/other/services").await["items"].as_array().unwrap().len(), 0);
    assert_eq!(first["metadata"]["resourceVersion"], api.resource_version().to_string());
    assert_eq!(api.list_requests(), 4);
}

#[tokio::test]
async fn watches_stream_events_bookmarks_and_410() {
    let api = FakeApi::start().await.unwrap();
    let rv = api.apply(svc("a", json!({})));
    let mut w = Watch::open(&api, &format!("resourceVersion={rv}&allowWatchBookmarks=true")).await;
    assert!(api.wait_open_watches(1, Duration::from_secs(5)).await);
    api.apply(svc("b", json!({})));
    assert_eq!(w.next("ADDED").await["object"]["metadata"]["name"], "b");
    api.apply(svc("b", json!({"x": "y"})));
    assert_eq!(w.next("MODIFIED").await["object"]["metadata"]["labels"]["x"], "y");
    api.delete(Kind::Service, "ns", "a");
    assert_eq!(w.next("DELETED").await["object"]["metadata"]["name"], "a");
    api.send_bookmarks();
    let mark = w.next("BOOKMARK").await;
    assert_eq!(mark["object"]["metadata"]["resourceVersion"], api.resource_version().to_string());

    // A watch from before the compacted history gets an in-stream 410 Expired, as the real
    // server sends it.
    api.compact();
    let mut old = Watch::open(&api, &format!("resourceVersion={rv}")).await;
    let gone = old.next("ERROR").await;
    assert_eq!(
        (gone["object"]["code"].as_u64(), gone["object"]["reason"].as_str()),
        (Some(410), Some("Expired"))
    );

    // Dropping watches ends the streams; the server counts what it served.
    api.drop_watches();
    assert!(api.wait_open_watches(0, Duration::from_secs(5)).await);
    assert_eq!(api.watch_requests(), 2);
}

#[tokio::test]
async fn stats_count_connections_watches_and_bytes() {
    let api = FakeApi::start().await.unwrap();
    api.apply(svc("a", json!({})));
    assert_eq!(api.stats(), nodedns_kubesim::Stats::default());

    let mut w = Watch::open(&api, "resourceVersion=0").await;
    assert_eq!(w.next("ADDED").await["object"]["metadata"]["name"], "a");
    let open = api.stats();
    assert_eq!((open.connections_open, open.connections_total), (1, 1));
    assert_eq!((open.watches_open, open.watch_requests), (1, 1));
    assert_eq!(open.watch_events.get(Kind::Service), 1);
    assert!(open.watch_bytes.get(Kind::Service) > 0);
    assert_eq!(open.watch_bytes.get(Kind::Pod), 0);
    // What reached the socket holds the event plus the HTTP head and chunk framing.
    assert!(open.socket_bytes > open.watch_bytes.total());

    // The client hangs up: the watch and its connection are counted closed.
    drop(w);
    assert!(api.wait_stats(Duration::from_secs(5), |s| s.connections_open == 0 && s.watches_open == 0).await);

    get(&api, "/api/v1/services").await;
    let listed = api.stats().since(&open);
    assert_eq!((listed.list_requests, listed.watch_requests, listed.connections_total), (1, 0, 1));
    assert!(listed.list_bytes.get(Kind::Service) > 0);
    assert_eq!(listed.list_bytes.get(Kind::Pod), 0);

    // The same counters over HTTP, for runs that hold no handle to the server.
    let served = get(&api, "/kubesim/stats").await;
    assert_eq!(served["list_requests"], 1);
    assert_eq!(served["watch_events"]["Service"], 1);
}
