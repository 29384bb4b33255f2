//! `vigil node` as its own process: its RPC dialect compared, call by call, with a real Bitcoin
//! Core's, and its ZMQ notifications.

use std::time::Duration;

use serde_json::{json, Value};
use vigil_chain::bitcoin::bip32::{Xpriv, Xpub};
use vigil_chain::bitcoin::hashes::Hash;
use vigil_chain::bitcoin::{Amount, Network, OutPoint, PrivateKey, Transaction, TxOut};
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

/// Fields whose array may be empty on one side only, each with its reason. Kept minimal:
/// every key, at every depth, must be the same on both sides regardless.
const MAY_BE_EMPTY: &[&str] = &[
    // A pre-release Core build warns that it is one ("This is a pre-release test build");
    // vigil node is not a build of Core and has nothing to warn about.
    "warnings",
];

/// Parameters as the verdict lines show them: hashes and hex abbreviated.
fn brief(params: &Value) -> String {
    let short = |v: &Value| match v.as_str() {
        Some(s) if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) => json!("<hash>"),
        Some(s) if s.len() > 64 && s.chars().all(|c| c.is_ascii_hexdigit()) => json!("<tx hex>"),
        Some(s) if s.len() > 40 => json!(format!("{}…", s.chars().take(40).collect::<String>())),
        _ => v.clone(),
    };
    let v = match params {
        Value::Array(a) => {
            json!(a
                .iter()
                .map(|p| p
                    .as_array()
                    .map_or_else(|| short(p), |i| json!(i.iter().map(short).collect::<Vec<_>>())))
                .collect::<Vec<_>>())
        }
        other => other.clone(),
    };
    v.to_string()
}

/// The kind of a JSON value.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Bool(_) => "bool",
        Value::Null => "null",
    }
}

/// An object keyed by txid or wtxid (verbose `getrawmempool`, `submitpackage`'s results):
/// the keys differ between the nodes, the entries must not.
fn keyed_by_hash(m: &serde_json::Map<String, Value>) -> bool {
    !m.is_empty() && m.keys().all(|k| k.len() == 64 && k.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Vigil's answer has exactly Core's keys, recursively (objects inside arrays compared element
/// by element), with values of the same kinds.
fn assert_same_keys(ours: &Value, core: &Value, path: &str) {
    let may_be_empty = MAY_BE_EMPTY.iter().any(|f| path.ends_with(&format!(".{f}")));
    match (ours, core) {
        (Value::Object(o), Value::Object(c)) if keyed_by_hash(o) || keyed_by_hash(c) => {
            assert_eq!(o.len(), c.len(), "{path}: ours has {} entries, Core {}", o.len(), c.len());
            // Paired in the order of the chain: mempool entries by ancestor count (parents
            // first), other entries as they come.
            let sorted = |m: &serde_json::Map<String, Value>| {
                let mut v: Vec<Value> = m.values().cloned().collect();
                v.sort_by_key(|e| e.get("ancestorcount").and_then(Value::as_u64));
                v
            };
            for (x, y) in sorted(o).iter().zip(&sorted(c)) {
                assert_same_keys(x, y, &format!("{path}.<hash>"));
            }
        }
        (Value::Object(o), Value::Object(c)) => {
            let ours_only: Vec<&String> = o.keys().filter(|k| !c.contains_key(*k)).collect();
            let core_only: Vec<&String> = c.keys().filter(|k| !o.contains_key(*k)).collect();
            assert!(
                ours_only.is_empty() && core_only.is_empty(),
                "{path}: keys differ: only ours {ours_only:?}, only Core's {core_only:?}\nours {ours}\nCore {core}"
            );
            for (k, v) in o {
                assert_same_keys(v, &c[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert!(
                a.is_empty() == b.is_empty() || may_be_empty,
                "{path}: one array is empty: ours {ours}, Core {core}"
            );
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same_keys(x, y, &format!("{path}[{i}]"));
            }
        }
        (a, b) => assert_eq!(kind(a), kind(b), "{path}: ours {a}, Core {b}"),
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
        answers.push(v);
    }
    // Keyed by wtxid: the entries are compared, not the keys.
    assert_same_keys(&answers[1], &answers[0], "submitpackage");
    let sizes_and_fees = |v: &Value| {
        let mut r: Vec<String> = v["tx-results"]
            .as_object()
            .unwrap()
            .values()
            .map(|e| format!("{} {} {}", e["vsize"], e["fees"]["base"], e["fees"]["effective-feerate"]))
            .collect();
        r.sort();
        r
    };
    assert_eq!(
        sizes_and_fees(&answers[1]),
        sizes_and_fees(&answers[0]),
        "same transactions, same sizes and fees"
    );
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
    // The same transactions on both chains (their coins differ): a parent, and a child paying
    // more, so that the two are mined as one chunk.
    let family = |p: &Node| {
        let (outpoint, prev) = mature_coin(&p.rpc);
        let parent = wallet.spend(outpoint, &prev, 1_000);
        let child = wallet.spend(OutPoint { txid: parent.compute_txid(), vout: 0 }, &parent.output[0], 3_000);
        (parent, child)
    };
    let (ours, theirs) = (family(&node), family(&core));
    let txs = |p: &Node| if std::ptr::eq(p, &node) { &ours } else { &theirs };
    let hex = |tx: &Transaction| json!(vigil_chain::bitcoin::consensus::encode::serialize_hex(tx));
    let txid = |tx: &Transaction| json!(tx.compute_txid().to_string());

    // Descriptors to analyse: keys from a fixed seed, so both nodes see the same strings.
    let secp = vigil_chain::bitcoin::secp256k1::Secp256k1::new();
    let master = Xpriv::new_master(Network::Regtest, &[7; 32]).unwrap();
    let tpub = Xpub::from_priv(&secp, &master);
    let xonly = wallet.key.x_only_public_key().0;
    let pubkey = wallet.key.public_key();
    let wif = PrivateKey::new(wallet.key.secret_key(), Network::Regtest).to_wif();
    let descriptors = [
        format!("addr({})", wallet.address()),
        "raw(6A0401020304)".to_owned(),
        format!("tr({xonly})"),
        format!("wpkh({tpub}/0/*)"),
        format!("wpkh([d34db33f/84h/1h/0h]{tpub}/<0;1>/*)"),
        format!("wsh(multi(2,[d34db33f/48'/1'/0'/2']{tpub}/0/*,{pubkey}))"),
        format!("tr({xonly},{{pk({tpub}/1/*),and_v(v:pk({pubkey}),older(144))}})"),
        format!("sh(wpkh({pubkey}))"),
        format!("pkh({master}/44h/1h/0h/0/*)"),
        format!("wpkh({wif})"),
        format!("rawtr({xonly})"),
        format!("combo({pubkey})"),
    ];

    // Each call: method, parameters, and the JSON pointers whose values must be equal too
    // ("" for the whole answer), where the two chains must agree.
    type Call<'a> = (&'a str, Box<dyn Fn(&Node) -> Value + 'a>, Vec<&'a str>);
    let hash = |p: &Node, height: u32| json!(p.rpc.block_hash(height).unwrap().unwrap().to_string());
    let tip = |p: &Node| hash(p, p.rpc.tip().unwrap().height);
    let coinbase1 = |p: &Node| json!(mature_coin(&p.rpc).0.txid.to_string());
    let header = vec![
        "/height",
        "/confirmations",
        "/version",
        "/bits",
        "/target",
        "/difficulty",
        "/chainwork",
        "/nTx",
    ];
    let block = [header.clone(), vec!["/coinbase_tx/version", "/coinbase_tx/witness"]].concat();
    let coinbase = vec!["/version", "/vout/0/value", "/vout/0/scriptPubKey", "/vout/1/scriptPubKey/type"];
    let entry = vec![
        "/vsize",
        "/weight",
        "/height",
        "/descendantcount",
        "/descendantsize",
        "/ancestorcount",
        "/ancestorsize",
        "/chunkweight",
        "/fees",
        "/unbroadcast",
    ];
    let mut calls: Vec<Call> = vec![
        ("getblockcount", Box::new(|_| json!([])), vec![""]),
        ("getbestblockhash", Box::new(|_| json!([])), vec![]),
        ("getblockhash", Box::new(|_| json!([1])), vec![]),
        ("getblockhash", Box::new(|_| json!([99_999])), vec![]),
        (
            "getblockchaininfo",
            Box::new(|_| json!([])),
            vec![
                "/chain",
                "/blocks",
                "/headers",
                "/bits",
                "/target",
                "/difficulty",
                "/chainwork",
                "/initialblockdownload",
                "/pruned",
            ],
        ),
    ];
    for verbosity in [json!(null), json!(0), json!(1), json!(2), json!(3), json!(true), json!(false)] {
        let hex = verbosity == json!(0) || verbosity == json!(false);
        let equal = if hex { vec![] } else { block.clone() };
        calls.push(("getblock", Box::new(move |p| json!([hash(p, 1), verbosity])), equal));
    }
    calls.extend::<Vec<Call>>(vec![
        ("getblock", Box::new(|_| json!(["00".repeat(32)])), vec![]),
        ("getblock", Box::new(|_| json!(["xyz"])), vec![]),
        ("getblockheader", Box::new(move |p| json!([hash(p, 1)])), header.clone()),
        ("getblockheader", Box::new(move |p| json!([hash(p, 1), true])), header.clone()),
        ("getblockheader", Box::new(move |p| json!([hash(p, 1), false])), vec![]),
        ("getblockheader", Box::new(|_| json!(["00".repeat(32)])), vec![]),
        ("getrawtransaction", Box::new(|_| json!(["11".repeat(32)])), vec![]),
        ("getrawtransaction", Box::new(move |p| json!([coinbase1(p), 0])), vec![]),
        ("getrawtransaction", Box::new(move |p| json!([coinbase1(p), 1])), coinbase.clone()),
        ("getrawtransaction", Box::new(move |p| json!([coinbase1(p), 2])), coinbase.clone()),
        ("getrawtransaction", Box::new(move |p| json!([coinbase1(p), true, hash(p, 1)])), coinbase.clone()),
        ("getrawtransaction", Box::new(move |p| json!([coinbase1(p), 1, hash(p, 2)])), vec![]),
        (
            "gettxout",
            Box::new(move |p| json!([coinbase1(p), 0])),
            vec!["/confirmations", "/value", "/coinbase", "/scriptPubKey"],
        ),
        ("gettxout", Box::new(|_| json!(["11".repeat(32), 0])), vec![""]),
        (
            "getmempoolinfo",
            Box::new(|_| json!([])),
            vec![
                "/loaded",
                "/size",
                "/bytes",
                "/total_fee",
                "/maxmempool",
                "/mempoolminfee",
                "/minrelaytxfee",
                "/incrementalrelayfee",
                "/unbroadcastcount",
                "/permitbaremultisig",
                "/maxdatacarriersize",
                "/limitclustercount",
                "/limitclustersize",
                "/optimal",
            ],
        ),
        ("getrawmempool", Box::new(|_| json!([])), vec![""]),
        ("getrawmempool", Box::new(|_| json!([true])), vec![""]),
        ("getrawmempool", Box::new(|_| json!([false, true])), vec!["/txids"]),
        ("getrawmempool", Box::new(|_| json!([true, true])), vec![]),
        ("getrawmempool", Box::new(|_| json!([1])), vec![]),
        (
            "getnetworkinfo",
            Box::new(|_| json!([])),
            vec![
                "/protocolversion",
                "/localservices",
                "/localservicesnames",
                "/localrelay",
                "/timeoffset",
                "/networkactive",
                "/connections",
                "/connections_in",
                "/connections_out",
                "/networks",
                "/relayfee",
                "/incrementalfee",
                "/localaddresses",
            ],
        ),
    ]);
    for d in &descriptors {
        calls.push(("getdescriptorinfo", Box::new(move |_| json!([d])), vec![""]));
    }
    calls.extend::<Vec<Call>>(vec![
        ("getdescriptorinfo", Box::new(|_| json!(["wpkh(nonsense)"])), vec![]),
        ("getdescriptorinfo", Box::new(|_| json!(["raw(6a00)#00000000"])), vec![]),
        ("getdescriptorinfo", Box::new(|_| json!([])), vec![]),
    ]);
    for target in
        [json!([1]), json!([6]), json!([1008]), json!([6, "economical"]), json!([6, "CONSERVATIVE"])]
    {
        calls.push(("estimatesmartfee", Box::new(move |_| target.clone()), vec![""]));
    }
    for bad in [json!([0]), json!([1009]), json!([-1]), json!([6, "bogus"]), json!(["6"]), json!([])] {
        calls.push(("estimatesmartfee", Box::new(move |_| bad.clone()), vec![]));
    }
    calls.extend::<Vec<Call>>(vec![
        ("sendrawtransaction", Box::new(|_| json!(["zz"])), vec![]),
        (
            "testmempoolaccept",
            Box::new(move |p| json!([[hex(&txs(p).0)]])),
            vec!["/0/allowed", "/0/vsize", "/0/fees/base", "/0/fees/effective-feerate"],
        ),
        ("sendrawtransaction", Box::new(move |p| json!([hex(&txs(p).0)])), vec![]),
        ("sendrawtransaction", Box::new(move |p| json!([hex(&txs(p).0)])), vec![]),
        (
            "testmempoolaccept",
            Box::new(move |p| json!([[hex(&txs(p).0)]])),
            vec!["/0/allowed", "/0/reject-reason"],
        ),
        ("sendrawtransaction", Box::new(move |p| json!([hex(&txs(p).1)])), vec![]),
        ("getrawmempool", Box::new(|_| json!([])), vec![]),
        ("getrawmempool", Box::new(|_| json!([true])), vec![]),
        ("getrawmempool", Box::new(|_| json!([false, true])), vec![]),
        ("getmempoolentry", Box::new(move |p| json!([txid(&txs(p).0)])), entry.clone()),
        ("getmempoolentry", Box::new(move |p| json!([txid(&txs(p).1)])), entry.clone()),
        ("getmempoolentry", Box::new(|_| json!(["11".repeat(32)])), vec![]),
        (
            "getmempoolinfo",
            Box::new(|_| json!([])),
            vec!["/size", "/bytes", "/total_fee", "/unbroadcastcount"],
        ),
        (
            "getrawtransaction",
            Box::new(move |p| json!([txid(&txs(p).0), 1])),
            vec!["/version", "/size", "/vsize", "/weight", "/locktime", "/vout/0/scriptPubKey/desc"],
        ),
        ("getrawtransaction", Box::new(move |p| json!([txid(&txs(p).0), 2])), vec!["/vsize"]),
        ("gettxout", Box::new(move |p| json!([txid(&txs(p).0), 0])), vec![""]),
        ("gettxout", Box::new(move |p| json!([txid(&txs(p).0), 0, false])), vec![""]),
        (
            "gettxout",
            Box::new(move |p| json!([txid(&txs(p).1), 0])),
            vec!["/confirmations", "/value", "/coinbase", "/scriptPubKey/desc"],
        ),
        ("generatetoaddress", Box::new(|_| json!([1, Wallet::new().address().to_string()])), vec![]),
        ("getrawmempool", Box::new(|_| json!([true])), vec![""]),
    ]);
    // The block confirming the parent and the child: their fees (verbosity 2) and the coins
    // they spent (3).
    let fees = vec!["/nTx", "/tx/1/fee", "/tx/1/vsize", "/tx/2/fee"];
    let prevouts = [fees.clone(), vec!["/tx/1/vin/0/prevout", "/tx/2/vin/0/prevout"]].concat();
    for (verbosity, equal) in [(1, vec!["/nTx"]), (2, fees), (3, prevouts)] {
        calls.push(("getblock", Box::new(move |p| json!([tip(p), verbosity])), equal));
    }
    calls.extend::<Vec<Call>>(vec![
        ("getrawtransaction", Box::new(move |p| json!([txid(&txs(p).1), 1])), vec!["/confirmations"]),
        ("getrawtransaction", Box::new(move |p| json!([txid(&txs(p).1), 2])), vec!["/fee", "/vin/0/prevout"]),
        (
            "getrawtransaction",
            Box::new(move |p| json!([txid(&txs(p).0), 2, tip(p)])),
            vec!["/fee", "/in_active_chain"],
        ),
        ("getrawtransaction", Box::new(move |p| json!([mature_coin(&p.rpc).0.txid.to_string(), 2])), vec![]),
        (
            "gettxout",
            Box::new(move |p| json!([txid(&txs(p).1), 0])),
            vec!["/confirmations", "/value", "/coinbase", "/scriptPubKey"],
        ),
        ("nosuchmethod", Box::new(|_| json!([])), vec![]),
        ("waitfornewblock", Box::new(|_| json!([10])), vec!["/height"]),
    ]);
    for (method, params, equal) in &calls {
        let ours = node.rpc.call(method, params(&node));
        let theirs = core.rpc.call(method, params(&core));
        let verdict = match (&ours, &theirs) {
            (Ok(o), Ok(c)) => {
                assert_same_keys(o, c, method);
                for pointer in equal {
                    assert!(c.pointer(pointer).is_some(), "{method}: Core has no {pointer}: {c}");
                    assert_eq!(
                        o.pointer(pointer),
                        c.pointer(pointer),
                        "{method} {}: {pointer} differs\nours {o}\nCore {c}",
                        params(&node)
                    );
                }
                match equal.len() {
                    _ if equal.contains(&"") => "same answer".to_string(),
                    0 => "same keys".to_string(),
                    n => format!("same keys, {n} values equal"),
                }
            }
            (Err(BackendError::Rpc { code: a, .. }), Err(BackendError::Rpc { code: b, .. })) => {
                assert_eq!(a, b, "{method}: error codes differ ({ours:?} vs {theirs:?})");
                format!("same error {a}")
            }
            _ => panic!("{method} {}: vigil node {ours:?}, Core {theirs:?}", params(&node)),
        };
        println!("{method:>20} {:<60} {verdict}", brief(&params(&node)));
    }

    // REST: the raw block, as `getblock <hash> 0` decodes, from both.
    for p in [&core, &node] {
        let hash = p.rpc.block_hash(1).unwrap().unwrap();
        let over_rest = p.rpc.clone().with_rest(true).raw_block(&hash).unwrap();
        assert_eq!(over_rest, p.rpc.raw_block(&hash).unwrap());
    }
    println!("{:>20} raw bytes equal to getblock's, from both", "REST /rest/block");

    // Refusals: the same reject reasons from the relay policy and the same codes, for spends
    // of a coin nothing spent yet.
    let fresh_coin = |p: &Node| {
        let hash = p.rpc.block_hash(2).unwrap().unwrap();
        let coinbase = p.rpc.block(&hash).unwrap().txdata[0].clone();
        (OutPoint { txid: coinbase.compute_txid(), vout: 0 }, coinbase.output[0].clone())
    };
    let tx_for = |p: &Node| {
        let (outpoint, prev) = fresh_coin(p);
        wallet.spend(outpoint, &prev, 1_000)
    };
    let resign = |mut tx: Transaction, p: &Node| {
        vigil_testenv::vigil_policy::sign_key_path(&mut tx, 0, &[fresh_coin(p).1], &wallet.key).unwrap();
        tx
    };
    type MakeTx<'a> = Box<dyn Fn(&Node) -> Transaction + 'a>;
    let bad: Vec<(&str, MakeTx)> = vec![
        (
            "zero fee",
            Box::new(|p| {
                let mut t = tx_for(p);
                t.output[0].value += Amount::from_sat(1_000);
                resign(t, p)
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
                resign(t, p)
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
