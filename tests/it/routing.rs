//! Owner-core routing: every key is served by its owner shard, whichever
//! core received the connection.

use shardgate_shards::route::shard_for_key;

use crate::harness::{connection_per_core, get, put, Client, Server};

fn key_owned_by(owner: u32, shards: u32) -> String {
    (0..).map(|i| format!("key-{i}")).find(|k| shard_for_key(k.as_bytes(), shards) == owner).unwrap()
}

#[test]
fn keys_are_reachable_from_every_core() {
    let server = Server::start(&["--shards", "2"]);
    let mut clients = connection_per_core(&server, 2);
    for owner in 0..2u32 {
        let key = key_owned_by(owner, 2);
        let path = format!("/v1/kv/{key}");
        let expect_shard = format!("{owner}/2");
        for writer in 0..2usize {
            let value = format!("from core {writer}");
            let stored = clients[writer].request(&put(&path, &value));
            assert!(matches!(stored.status, 200 | 201));
            assert_eq!(stored.header("x-shard"), Some(expect_shard.as_str()));
            // Read-your-writes on both cores, local and forwarded.
            for (reader, client) in clients.iter_mut().enumerate() {
                let got = client.request(&get(&path));
                assert_eq!(got.text(), value, "written on core {writer}, read on core {reader}");
                assert_eq!(got.header("x-shard"), Some(expect_shard.as_str()));
            }
        }
    }
    // Each core forwarded to the other.
    for shard in ["0", "1"] {
        assert!(
            server.metric("shardgate_cross_core_hops_total", &[("shard", shard)]) > 0.0,
            "shard {shard} never forwarded"
        );
        assert!(server.metric("shardgate_cross_core_received_total", &[("shard", shard)]) > 0.0);
    }
}

#[test]
fn pipelined_batch_mixing_local_and_forwarded_keys_answers_in_order() {
    let server = Server::start(&["--shards", "2"]);
    let mut clients = connection_per_core(&server, 2);
    let keys: Vec<String> = (0..8).map(|i| key_owned_by(i % 2, 2) + &i.to_string()).collect();
    let mut batch = String::new();
    for (i, key) in keys.iter().enumerate() {
        batch += &put(&format!("/v1/kv/{key}"), &format!("value-{i}"));
    }
    for key in &keys {
        batch += &get(&format!("/v1/kv/{key}"));
    }
    let client = &mut clients[0];
    client.write(batch.as_bytes());
    for key in &keys {
        let response = client.response();
        assert_eq!(response.status, 201, "PUT {key}");
    }
    for (i, key) in keys.iter().enumerate() {
        let response = client.response();
        assert_eq!(response.text(), format!("value-{i}"), "GET {key}");
        let owner = shard_for_key(key.as_bytes(), 2);
        assert_eq!(response.header("x-shard"), Some(format!("{owner}/2").as_str()));
    }
}

#[test]
fn many_connections_read_their_writes() {
    let server = Server::start(&["--shards", "2"]);
    let mut clients: Vec<Client> = (0..16).map(|_| server.client()).collect();
    for round in 0..20 {
        for (i, client) in clients.iter_mut().enumerate() {
            let path = format!("/v1/kv/conn-{i}-{}", round % 5);
            let value = format!("{i}:{round}");
            assert!(matches!(client.request(&put(&path, &value)).status, 200 | 201));
        }
        // Read back on a different connection than the writer.
        for i in 0..clients.len() {
            let path = format!("/v1/kv/conn-{i}-{}", round % 5);
            let reader = (i + 7) % clients.len();
            assert_eq!(clients[reader].request(&get(&path)).text(), format!("{i}:{round}"));
        }
    }
}
