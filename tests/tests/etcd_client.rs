//! The `hyperloop-etcd` client itself against a real etcd (3.4) started per test on
//! loopback: the calls the adapters build on, and failover between endpoints.

use std::time::{Duration, Instant};

use hyperloop_etcd::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    compare::CompareResult, response_op,
};
use hyperloop_etcd::mvccpb::event::EventType;
use hyperloop_etcd::{Client, Error, Options, prefix_end};
use hyperloop_tests::etcd::Etcd;

fn client(endpoints: &[String]) -> Client {
    let options = Options {
        connect_timeout: Some(Duration::from_secs(2)),
        request_timeout: Some(Duration::from_secs(5)),
        require_leader: true,
    };
    Client::connect(endpoints, &options).unwrap()
}

/// A loopback port nothing listens on.
fn dead_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_txn_whose_compare_fails_runs_the_else_branch() {
    let etcd = Etcd::start();
    let client = client(std::slice::from_ref(&etcd.endpoint));
    let put = client.put(PutRequest::new("/t/k", "one")).await.unwrap();
    let revision = put.header.unwrap().revision;

    let stale = TxnRequest {
        compare: vec![Compare::mod_revision(
            "/t/k",
            CompareResult::Equal,
            revision - 1,
        )],
        success: vec![RequestOp::put("/t/k", "two")],
        failure: vec![RequestOp::get("/t/k")],
    };
    let response = client.txn(stale).await.unwrap();
    assert!(!response.succeeded);
    let Some(response_op::Response::ResponseRange(read)) = &response.responses[0].response else {
        panic!("the else branch's get answers: {response:?}");
    };
    assert_eq!(read.kvs[0].value, b"one");
    assert_eq!(read.kvs[0].mod_revision, revision);

    let current = TxnRequest {
        compare: vec![Compare::mod_revision(
            "/t/k",
            CompareResult::Equal,
            revision,
        )],
        success: vec![
            RequestOp::put("/t/k", "two"),
            RequestOp::delete_range("/t/old/", prefix_end(b"/t/old/")),
        ],
        failure: vec![],
    };
    assert!(client.txn(current).await.unwrap().succeeded);
    assert_eq!(client.get("/t/k").await.unwrap().unwrap().value, b"two");
}

#[tokio::test]
async fn a_range_pages_through_a_prefix_and_counts_it() {
    let etcd = Etcd::start();
    let client = client(std::slice::from_ref(&etcd.endpoint));
    for i in 0..5 {
        client
            .put(PutRequest::new(format!("/p/{i}"), "v"))
            .await
            .unwrap();
    }
    client.put(PutRequest::new("/q", "outside")).await.unwrap();
    let page = client
        .range(RangeRequest {
            key: b"/p/".to_vec(),
            range_end: prefix_end(b"/p/"),
            limit: 2,
            ..RangeRequest::default()
        })
        .await
        .unwrap();
    let keys: Vec<&[u8]> = page.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [b"/p/0", b"/p/1"]);
    assert!(page.more);
    assert_eq!(page.count, 5, "the count ignores the limit");
    assert_eq!(client.get("/nothing").await.unwrap(), None);
}

#[tokio::test]
async fn a_watch_sees_puts_and_deletes_from_its_start_revision() {
    let etcd = Etcd::start();
    let client = client(std::slice::from_ref(&etcd.endpoint));
    let first = client.put(PutRequest::new("/w/k", "1")).await.unwrap();
    let mut watch = client
        .watch(WatchCreateRequest {
            key: b"/w/k".to_vec(),
            start_revision: first.header.unwrap().revision,
            ..WatchCreateRequest::default()
        })
        .await
        .unwrap();
    // The put before the watch started is replayed from the start revision.
    let deleting = TxnRequest {
        compare: vec![],
        success: vec![RequestOp::delete_range("/w/k", "")],
        failure: vec![],
    };
    client.txn(deleting).await.unwrap();

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 2 {
        let response = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .expect("the watch answers in time")
            .unwrap()
            .expect("the watch goes on");
        assert!(!response.canceled, "{response:?}");
        seen.extend(
            response
                .events
                .iter()
                .map(|e| (e.r#type(), e.kv.clone().unwrap().key)),
        );
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, b"/w/k".to_vec()),
            (EventType::Delete, b"/w/k".to_vec())
        ]
    );
}

#[tokio::test]
async fn revoking_a_lease_deletes_its_keys_and_ends_its_keep_alive() {
    let etcd = Etcd::start();
    let client = client(std::slice::from_ref(&etcd.endpoint));
    let lease = client.lease_grant(30).await.unwrap();
    assert!(lease.ttl >= 30, "{lease:?}");
    let put = PutRequest {
        lease: lease.id,
        ..PutRequest::new("/l/k", "held")
    };
    client.put(put).await.unwrap();
    assert_eq!(client.get("/l/k").await.unwrap().unwrap().lease, lease.id);

    let (mut keep_alive, left) = client.lease_keep_alive(lease.id).await.unwrap();
    assert!(left.is_some_and(|s| s > 0), "{left:?}");
    assert!(keep_alive.renew().await.unwrap().is_some());

    client.lease_revoke(lease.id).await.unwrap();
    assert_eq!(
        client.get("/l/k").await.unwrap(),
        None,
        "the key went with it"
    );
    assert_eq!(keep_alive.renew().await.unwrap(), None, "the lease is gone");
    let err = client.lease_revoke(lease.id).await.unwrap_err();
    assert!(
        matches!(&err, Error::Status(s) if s.code() == tonic::Code::NotFound),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_campaign_returns_the_leader_key_under_the_election_name() {
    let etcd = Etcd::start();
    let client = client(std::slice::from_ref(&etcd.endpoint));
    let lease = client.lease_grant(30).await.unwrap().id;
    let won = client.campaign("/e", "me", lease).await.unwrap();
    let leader = won.leader.unwrap();
    assert_eq!(leader.key, format!("/e/{lease:x}").into_bytes());
    assert!(leader.rev > 0);
    let key = client.get(leader.key).await.unwrap().unwrap();
    assert_eq!((key.value.as_slice(), key.lease), (b"me".as_slice(), lease));
}

#[tokio::test]
async fn unreachable_endpoints_are_an_error_naming_every_endpoint() {
    let endpoints = [dead_endpoint(), dead_endpoint()];
    let client = client(&endpoints);
    let err = client.get("/k").await.unwrap_err();
    let Error::Unreachable { last, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(last.code(), tonic::Code::Unavailable);
    let message = err.to_string();
    for endpoint in &endpoints {
        assert!(message.contains(endpoint.as_str()), "{message}");
    }
    assert!(message.contains("refused"), "says why: {message}");
}

#[tokio::test]
async fn with_the_first_of_two_endpoints_dead_every_call_still_succeeds() {
    let etcd = Etcd::start();
    let client = client(&[dead_endpoint(), etcd.endpoint.clone()]);
    client.put(PutRequest::new("/f/k", "v")).await.unwrap();
    assert!(client.get("/f/k").await.unwrap().is_some());
    let lease = client.lease_grant(30).await.unwrap().id;
    // Fresh clients, so that the streams are the first calls to skip the dead member.
    let fresh = || client_of(&etcd);
    let (_, left) = fresh().lease_keep_alive(lease).await.unwrap();
    assert!(left.is_some());
    let mut watch = fresh()
        .watch(WatchCreateRequest {
            key: b"/f/k".to_vec(),
            ..WatchCreateRequest::default()
        })
        .await
        .unwrap();
    let created = watch.next().await.unwrap().unwrap();
    assert!(created.created, "{created:?}");
}

fn client_of(etcd: &Etcd) -> Client {
    client(&[dead_endpoint(), etcd.endpoint.clone()])
}

#[tokio::test]
async fn a_bare_host_and_port_is_plain_http_and_https_is_refused_up_front() {
    let etcd = Etcd::start();
    let bare = etcd.endpoint.trim_start_matches("http://").to_owned();
    client(&[bare])
        .put(PutRequest::new("/b", "v"))
        .await
        .unwrap();

    let err = Client::connect(&["https://127.0.0.1:2379"], &Options::default()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidEndpoint { endpoint, .. } if endpoint == "https://127.0.0.1:2379"),
        "{err:?}"
    );
    assert!(matches!(
        Client::connect(&[] as &[&str], &Options::default()),
        Err(Error::NoEndpoints)
    ));
}
