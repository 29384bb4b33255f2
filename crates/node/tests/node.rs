//! `vigil node` as its own process: its RPC dialect compared, call by call, with a real Bitcoin
//! Core's, and its ZMQ notifications.

use std::time::Duration;

use serde_json::{json, Value};
use vigil_chain::bitcoin::hashes::Hash;
use vigil_chain::bitcoin::{Amount, Transaction, TxOut};
use vigil_chain::{BackendError, BitcoindRpc, ChainBackend};
use vigil_testenv::process::{bitcoind, vigil_node, vigil_node_with_zmq, Node};
use vigil_testenv::wallet::{mature_coin, mine, Wallet};

#[test]
fn vigil_node_publishes_cores_zmq_notifications() {
    let (node, endpoint) = vigil_node_with_zmq();
    let rpc = &node.rpc;
    let wallet = Wallet::new();
    let bell = vigil_chain::zmq::subscribe(&endpoint, &[""]).unwrap();
    // A subscription reaches the publisher a moment after connecting (ZMQ's slow joiner):
    // mine until the first notification arrives, then start counting afresh.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        mine(rpc, 1, &wallet.address());
        if bell.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no ZMQ notification arrived");
    }
    mine(rpc, 101, &wallet.address());
    std::thread::sleep(Duration::from_millis(300));
    while bell.try_recv().is_ok() {}
    let drain = |until: &dyn Fn(&[vigil_chain::zmq::Notification]) -> bool| {
        let mut got = Vec::new();
        while !until(&got) {
            got.push(bell.recv_timeout(Duration::from_secs(10)).expect("a notification"));
        }
        got
    };

    // A transaction entering the mempool: hashtx, rawtx, then sequence "A" with the mempool
    // sequence that getrawmempool reports.
    let (outpoint, prev) = mature_coin(rpc);
    let tx = wallet.spend(outpoint, &prev, 1_000);
    let txid = rpc.broadcast(&tx).unwrap();
    let got = drain(&|g| g.len() == 3);
    let topics: Vec<&str> = got.iter().map(|n| n.topic.as_str()).collect();
    assert_eq!(topics, ["hashtx", "rawtx", "sequence"]);
    let mut display = txid.to_byte_array();
    display.reverse();
    assert_eq!(got[0].body, display, "hashes in the RPC's byte order");
    assert_eq!(got[1].body, vigil_chain::bitcoin::consensus::serialize(&tx));
    let (hash, label, mempool_sequence) = got[2].sequence().unwrap();
    assert_eq!((hash, label), (display, b'A'));
    assert_eq!(mempool_sequence, Some(rpc.mempool().unwrap().sequence));

    // A block: each transaction, then sequence "C", hashblock and rawblock; the counters
    // of every topic advance by one per message.
    let hash = mine(rpc, 1, &wallet.address()).remove(0);
    let got = drain(&|g| g.last().is_some_and(|n| n.topic == "rawblock"));
    let topics: Vec<&str> = got.iter().map(|n| n.topic.as_str()).collect();
    assert_eq!(topics, ["hashtx", "rawtx", "hashtx", "rawtx", "sequence", "hashblock", "rawblock"]);
    let block: vigil_chain::bitcoin::Block =
        vigil_chain::bitcoin::consensus::deserialize(&got[6].body).unwrap();
    assert_eq!(block.block_hash().to_string(), hash);
    assert_eq!(block.txdata[1].compute_txid(), txid);
    let (_, label, none) = got[4].sequence().unwrap();
    assert_eq!((label, none), (b'C', None));
    assert_eq!(got[0].counter + 1, got[2].counter, "hashtx counts its own messages");
    assert_eq!(got[1].counter + 1, got[3].counter);

    // A reorg: the disconnected block's transactions, then sequence "D".
    let parent = rpc.block_hash(rpc.tip().unwrap().height - 1).unwrap().unwrap().to_string();
    let mut tip = parent;
    for _ in 0..2 {
        let mined =
            rpc.call("vigil_generateblock", json!([tip, wallet.address().to_string(), [], false])).unwrap();
        tip = mined["hash"].as_str().unwrap().to_owned();
    }
    let got = drain(&|g| g.iter().filter(|n| n.topic == "rawblock").count() == 2);
    let sequence: Vec<u8> = got.iter().filter_map(|n| n.sequence()).map(|(_, label, _)| label).collect();
    assert_eq!(sequence, b"DCC", "{got:?}");
    let (disconnected, ..) = got.iter().find_map(|n| n.sequence()).unwrap();
    let mut expected = block.block_hash().to_byte_array();
    expected.reverse();
    assert_eq!(disconnected, expected);
}

#[test]
fn errors_have_cores_codes() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let code = |method: &str, params: Value| match rpc.call(method, params) {
        Err(BackendError::Rpc { code, .. }) => code,
        other => panic!("{method}: expected an error, got {other:?}"),
    };
    assert_eq!(code("getblockhash", json!([99_999])), -8);
    assert_eq!(code("getblock", json!(["00".repeat(32)])), -5);
    assert_eq!(code("getblock", json!(["xyz"])), -8);
    assert_eq!(code("getrawtransaction", json!(["11".repeat(32)])), -5);
    assert_eq!(code("sendrawtransaction", json!(["zz"])), -22);
    assert_eq!(code("nosuchmethod", json!([])), -32601);
    let wrong = BitcoindRpc::new(&format!("http://{}", "127.0.0.1:1"), "a", "b");
    assert!(matches!(wrong.call("getblockcount", json!([])), Err(BackendError::Unreachable(_))));
}

/// The shape of a JSON answer: object keys (recursively), array element shapes, value types.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        // An array's shape is its first element's; an empty one fits any array.
        Value::Array(a) => match a.first() {
            Some(first) => json!({"[]": shape(first)}),
            None => json!("[]"),
        },
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

/// Every key Vigil answers with exists in Core's answer with the same shape; `required` keys
/// must be present in ours.
fn assert_subset(ours: &Value, core: &Value, path: &str) {
    match (ours, core) {
        (Value::Object(o), Value::Object(c)) => {
            for (k, v) in o {
                let cv = c.get(k).unwrap_or_else(|| panic!("{path}.{k}: Core has no such field"));
                assert_subset(v, cv, &format!("{path}.{k}"));
            }
        }
        (Value::String(s), Value::Object(c)) if s == "[]" && c.contains_key("[]") => {}
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

#[test]
fn submitpackage_answers_like_core() {
    let Some(core) = bitcoind() else { return };
    let node = vigil_node();
    let wallet = Wallet::new();
    let mut answers = Vec::new();
    for p in [&core, &node] {
        mine(&p.rpc, 102, &wallet.address());
        let hash = p.rpc.block_hash(2).unwrap().unwrap();
        let coinbase = p.rpc.block(&hash).unwrap().txdata[0].clone();
        let coin = vigil_chain::bitcoin::OutPoint { txid: coinbase.compute_txid(), vout: 0 };
        let parent = wallet.spend(coin, &coinbase.output[0], 1_000);
        let child = wallet.spend(
            vigil_chain::bitcoin::OutPoint { txid: parent.compute_txid(), vout: 0 },
            &parent.output[0],
            1_000,
        );
        let hexes = [&parent, &child].map(vigil_chain::bitcoin::consensus::encode::serialize_hex);
        let v = p.rpc.call("submitpackage", json!([hexes])).unwrap();
        assert_eq!(v["package_msg"], "success", "{v}");
        let pool = p.rpc.mempool().unwrap().txids;
        assert!(pool.contains(&parent.compute_txid()) && pool.contains(&child.compute_txid()));
        // Keyed by wtxid; compare the entries, not the keys.
        let entries: Vec<Value> = v["tx-results"].as_object().unwrap().values().cloned().collect();
        assert_eq!(entries.len(), 2);
        answers.push(entries);
    }
    for (c, o) in answers[0].iter().zip(&answers[1]) {
        assert_subset(&shape(o), &shape(c), "submitpackage.tx-results");
    }
    assert!(matches!(node.rpc.call("submitpackage", json!([[]])), Err(BackendError::Rpc { code: -8, .. })));
    assert!(matches!(core.rpc.call("submitpackage", json!([[]])), Err(BackendError::Rpc { code: -8, .. })));
}

#[test]
fn vigil_node_answers_like_bitcoin_core_call_by_call() {
    let Some(core) = bitcoind() else { return };
    let node = vigil_node();
    let wallet = Wallet::new();
    for p in [&core, &node] {
        mine(&p.rpc, 101, &wallet.address());
    }
    let (outpoint, prev) = mature_coin(&node.rpc);
    let core_coin = mature_coin(&core.rpc);
    let tx_for = |p: &Node| {
        if std::ptr::eq(p, &node) {
            wallet.spend(outpoint, &prev, 1_000)
        } else {
            wallet.spend(core_coin.0, &core_coin.1, 1_000)
        }
    };

    type Call<'a> = (&'a str, Box<dyn Fn(&Node) -> Value + 'a>, &'a [&'a str]);
    let hash1 = |p: &Node| json!(p.rpc.block_hash(1).unwrap().unwrap().to_string());
    let calls: Vec<Call> = vec![
        ("getblockcount", Box::new(|_| json!([])), &[]),
        ("getbestblockhash", Box::new(|_| json!([])), &[]),
        ("getblockhash", Box::new(|_| json!([1])), &[]),
        ("getblockhash", Box::new(|_| json!([99_999])), &[]),
        (
            "getblock",
            Box::new(move |p| json!([hash1(p)])),
            &["hash", "height", "tx", "previousblockhash", "confirmations"],
        ),
        ("getblock", Box::new(move |p| json!([hash1(p), 0])), &[]),
        ("getblock", Box::new(move |p| json!([hash1(p), 2])), &["tx"]),
        ("getblock", Box::new(|_| json!(["00".repeat(32)])), &[]),
        ("getblock", Box::new(|_| json!(["xyz"])), &[]),
        (
            "getblockheader",
            Box::new(move |p| json!([hash1(p)])),
            &["hash", "height", "previousblockhash", "confirmations"],
        ),
        ("getblockheader", Box::new(move |p| json!([hash1(p), false])), &[]),
        ("getblockchaininfo", Box::new(|_| json!([])), &["chain", "blocks", "bestblockhash", "mediantime"]),
        ("getrawmempool", Box::new(|_| json!([])), &[]),
        ("getrawmempool", Box::new(|_| json!([false, true])), &["txids", "mempool_sequence"]),
        (
            "gettxout",
            Box::new(|p| {
                let (o, _) = mature_coin(&p.rpc);
                json!([o.txid.to_string(), 0])
            }),
            &["bestblock", "confirmations", "value", "scriptPubKey", "coinbase"],
        ),
        ("gettxout", Box::new(|_| json!(["11".repeat(32), 0])), &[]),
        ("getrawtransaction", Box::new(|_| json!(["11".repeat(32)])), &[]),
        (
            "getrawtransaction",
            Box::new(|p| {
                let (o, _) = mature_coin(&p.rpc);
                json!([o.txid.to_string(), true])
            }),
            &["txid", "vin", "vout", "blockhash", "confirmations"],
        ),
        ("sendrawtransaction", Box::new(|_| json!(["zz"])), &[]),
        (
            "testmempoolaccept",
            Box::new(|p| json!([[vigil_chain::bitcoin::consensus::encode::serialize_hex(&tx_for(p))]])),
            &[],
        ),
        (
            "sendrawtransaction",
            Box::new(|p| json!([vigil_chain::bitcoin::consensus::encode::serialize_hex(&tx_for(p))])),
            &[],
        ),
        (
            "sendrawtransaction",
            Box::new(|p| json!([vigil_chain::bitcoin::consensus::encode::serialize_hex(&tx_for(p))])),
            &[],
        ),
        ("getrawmempool", Box::new(|_| json!([])), &[]),
        ("nosuchmethod", Box::new(|_| json!([])), &[]),
        ("waitfornewblock", Box::new(|_| json!([10])), &["hash", "height"]),
    ];
    for (method, params, required) in &calls {
        let ours = node.rpc.call(method, params(&node));
        let theirs = core.rpc.call(method, params(&core));
        let verdict = match (&ours, &theirs) {
            (Ok(o), Ok(c)) => {
                let (so, sc) = (shape(o), shape(c));
                if o.is_object() {
                    assert_subset(&so, &sc, method);
                    for k in *required {
                        assert!(o.get(*k).is_some(), "{method}: missing {k}");
                    }
                } else if let (Some(oa), Some(ca)) = (o.as_array(), c.as_array()) {
                    assert_eq!(oa.len(), ca.len(), "{method}");
                    if let (Some(a), Some(b)) = (oa.first(), ca.first()) {
                        assert_subset(&shape(a), &shape(b), method);
                    }
                } else {
                    assert_eq!(so, sc, "{method}");
                }
                "same shape".to_string()
            }
            (Err(BackendError::Rpc { code: a, .. }), Err(BackendError::Rpc { code: b, .. })) => {
                assert_eq!(a, b, "{method}: error codes differ ({ours:?} vs {theirs:?})");
                format!("same error {a}")
            }
            _ => panic!("{method}: vigil node {ours:?}, Core {theirs:?}"),
        };
        println!(
            "{method:>20} {params:<60} {verdict}",
            params = params(&node).to_string().chars().take(60).collect::<String>()
        );
    }

    // REST: the raw block, as `getblock <hash> 0` decodes, from both.
    for p in [&core, &node] {
        let hash = p.rpc.block_hash(1).unwrap().unwrap();
        let over_rest = p.rpc.clone().with_rest(true).raw_block(&hash).unwrap();
        assert_eq!(over_rest, p.rpc.raw_block(&hash).unwrap());
    }
    println!("{:>20} raw bytes equal to getblock's, from both", "REST /rest/block");

    // Refusals: the same reject reasons from the relay policy and the same codes.
    type MakeTx<'a> = Box<dyn Fn(&Node) -> Transaction + 'a>;
    let bad: Vec<(&str, MakeTx)> = vec![
        (
            "zero fee",
            Box::new(|p| {
                let mut t = tx_for(p);
                t.output[0].value += Amount::from_sat(1_000);
                resign(&wallet, t, p)
            }),
        ),
        (
            "dust output",
            Box::new(|p| {
                let mut t = tx_for(p);
                t.output.push(TxOut {
                    value: Amount::from_sat(100),
                    script_pubkey: wallet.address().script_pubkey(),
                });
                t.output[0].value -= Amount::from_sat(100);
                resign(&wallet, t, p)
            }),
        ),
        (
            "missing input",
            Box::new(|p| {
                let mut t = tx_for(p);
                t.input[0].previous_output.vout = 7;
                t
            }),
        ),
    ];
    for (name, make) in &bad {
        let reason = |p: &Node| {
            let hex = vigil_chain::bitcoin::consensus::encode::serialize_hex(&make(p));
            let r = p.rpc.call("testmempoolaccept", json!([[hex]])).unwrap();
            r[0]["reject-reason"].as_str().unwrap_or_default().to_owned()
        };
        let (ours, theirs) = (reason(&node), reason(&core));
        assert_eq!(ours, theirs, "{name}");
        println!("{name:>20} reject-reason {ours:?} from both");
    }
    let code = |p: &Node| match p.rpc.broadcast(&{
        let mut t = tx_for(p);
        t.input[0].previous_output.vout = 7;
        t
    }) {
        Err(BackendError::Rpc { code, .. }) => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(code(&node), code(&core));
}

/// Re-signs a spend of the first mature coin after editing it.
fn resign(wallet: &Wallet, mut tx: Transaction, p: &Node) -> Transaction {
    let (_, prev) = mature_coin(&p.rpc);
    vigil_testenv::vigil_policy::sign_key_path(&mut tx, 0, &[prev], &wallet.key).unwrap();
    tx
}
