//! The backend against scripted servers on loopback.
use std::io::{BufRead, BufReader, Write};

use bitcoin::block::Version;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::pow::CompactTarget;

use super::*;

/// What a test server serves.
#[derive(Default)]
struct Script {
    /// Headers by height; the last is its tip.
    headers: Vec<Header>,
    /// The tip height it announces, if not the last header's.
    announce: Option<u32>,
    /// A transaction it says confirmed at height 1, with an empty merkle branch.
    tx: Option<Transaction>,
}

type Served = std::sync::Arc<Mutex<Script>>;

/// An Electrum server on loopback serving `headers`.
fn server(headers: Vec<Header>) -> (String, Served) {
    let served: Served = std::sync::Arc::new(Mutex::new(Script { headers, ..Script::default() }));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let script = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut writer = stream.try_clone().unwrap();
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let request: Value = serde_json::from_str(&line).unwrap();
                let script = script.lock().unwrap();
                let headers = &script.headers;
                let param = |i: usize| request["params"][i].as_u64().unwrap_or(0) as usize;
                let result = match request["method"].as_str().unwrap() {
                    "server.version" => json!(["liar", "1.4"]),
                    "blockchain.block.header" => {
                        headers.get(param(0)).map_or(Value::Null, |h| json!(serialize_hex(h)))
                    }
                    "blockchain.block.headers" => {
                        let (start, count) = (param(0), param(1));
                        let hex: String = headers.iter().skip(start).take(count).map(serialize_hex).collect();
                        json!({"hex": hex, "count": hex.len() / 160, "max": 2016})
                    }
                    "blockchain.headers.subscribe" => json!({
                        "height": script.announce.unwrap_or(headers.len() as u32 - 1),
                        "hex": serialize_hex(headers.last().unwrap())
                    }),
                    "blockchain.transaction.get" => json!(script.tx.as_ref().map(serialize_hex)),
                    "blockchain.scripthash.get_history" => {
                        let txid = script.tx.as_ref().map(|t| t.compute_txid().to_string());
                        json!([{"tx_hash": txid, "height": 1}])
                    }
                    "blockchain.transaction.get_merkle" => json!({"block_height": 1, "pos": 0, "merkle": []}),
                    _ => Value::Null,
                };
                let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": result});
                if writeln!(writer, "{reply}").is_err() {
                    break;
                }
            }
        }
    });
    (address, served)
}

/// A backend for `headers`' server that starts verifying at `headers[0]` with `rules`
/// (instead of the network's anchor, which a test server cannot reach).
fn anchored_at_first(rules: HeaderRules, headers: Vec<Header>) -> (ElectrumBackend, Served) {
    let anchor = Anchor { height: 0, hash: headers[0].block_hash() };
    let chain = HeaderChain::from_anchor(rules, anchor, &headers[..1]).unwrap();
    let (address, served) = server(headers);
    let backend = ElectrumBackend::new(&address);
    backend.state.lock().unwrap().chain = Some(chain);
    (backend, served)
}

/// Mainnet block 1, as mined.
fn mainnet_block_1() -> Header {
    Header {
        version: Version::ONE,
        prev_blockhash: bitcoin::constants::genesis_block(bitcoin::Network::Bitcoin).block_hash(),
        merkle_root: "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098".parse().unwrap(),
        time: 1_231_469_665,
        bits: CompactTarget::from_consensus(0x1d00ffff),
        nonce: 2_573_394_689,
    }
}

#[test]
fn a_header_without_its_proof_of_work_is_refused_so_no_fake_confirmation_can_hang_on_it() {
    let genesis = bitcoin::constants::genesis_block(bitcoin::Network::Bitcoin).header;
    let mainnet = || HeaderRules::new(bitcoin::Network::Bitcoin);
    let (honest, _) = anchored_at_first(mainnet(), vec![genesis, mainnet_block_1()]);
    assert_eq!(honest.tip().unwrap().height, 1);
    // The same block with another merkle root (one that would "prove" a cancel that never
    // confirmed): its hash no longer meets its target.
    let mut forged = mainnet_block_1();
    forged.merkle_root = TxMerkleNode::from_byte_array([7; 32]);
    let (liar, _) = anchored_at_first(mainnet(), vec![genesis, forged]);
    assert!(matches!(liar.tip(), Err(BackendError::Invalid(e)) if e.contains("proof of work")));
    // A trivial target, as on regtest, is beyond mainnet's limit.
    let mut easy = forged;
    easy.bits = CompactTarget::from_consensus(0x207fffff);
    let (liar, _) = anchored_at_first(mainnet(), vec![genesis, easy]);
    assert!(matches!(liar.tip(), Err(BackendError::Invalid(e)) if e.contains("limit")));
    // A mainnet server must lead to the block Bitcoin Core ships as trusted.
    let (address, _) = server(vec![genesis, mainnet_block_1()]);
    let short = ElectrumBackend::new(&address);
    assert!(matches!(short.tip(), Err(BackendError::Invalid(e)) if e.contains("do not reach the anchor")));
    // A genesis of no known network is no chain at all.
    let (address, _) = server(vec![forged, forged]);
    let unknown = ElectrumBackend::new(&address);
    assert!(matches!(unknown.tip(), Err(BackendError::Invalid(e)) if e.contains("no network")));
}

#[test]
fn a_server_cannot_choose_the_difficulty_of_its_headers() {
    use crate::electrum::headers::tests::{easy, mined, next, run, EASY_BITS, PERIOD_SECS};
    // Period 0 took a quarter of its target time: period 1's headers are four times harder.
    let mut period_0 = run(mined(EASY_BITS, 1_000_000), 2_015, EASY_BITS, 1_000_000);
    period_0.push(next(period_0.last().unwrap(), EASY_BITS, 1_000_000 + PERIOD_SECS / 4));
    let with = |bits: u32, time: u32| {
        let mut headers = period_0.clone();
        headers.extend(run(next(headers.last().unwrap(), bits, time), 5, bits, time));
        anchored_at_first(easy(), headers).0
    };
    assert_eq!(with(0x1f1fffff, 1_000_010).tip().unwrap().height, 2020);
    assert_eq!(with(0x1f1fffff, 1_000_010).block_hash(2021).unwrap(), None, "beyond the tip");
    // Headers mined at period 0's easier difficulty, linked and with their own work: refused.
    let liar = with(EASY_BITS, 1_000_010);
    assert!(matches!(liar.tip(), Err(BackendError::Invalid(e)) if e.contains("require 0x1f1fffff")));
    // Headers from more than two hours ahead.
    let liar = with(0x1f1fffff, u32::MAX - 10);
    assert!(matches!(liar.tip(), Err(BackendError::Invalid(e)) if e.contains("future")));
}

#[test]
fn a_reorganisation_of_the_server_s_chain_is_followed_if_it_carries_the_work() {
    use crate::electrum::headers::tests::{mined, next, run};
    let bits = 0x207fffff;
    let headers = run(mined(bits, 1_000), 30, bits, 1_000);
    let (backend, served) = anchored_at_first(HeaderRules::new(bitcoin::Network::Regtest), headers.clone());
    assert_eq!(backend.tip().unwrap().height, 29);
    // The server moves to a branch from height 3 (deeper than the first look back), longer.
    let branch = run(next(&headers[2], bits, 1_001), 30, bits, 1_001);
    served.lock().unwrap().headers = headers[..3].iter().chain(&branch).copied().collect();
    let tip = backend.tip().unwrap();
    assert_eq!((tip.height, tip.hash), (32, branch[29].block_hash()));
    assert_eq!(backend.block_hash(3).unwrap(), Some(branch[0].block_hash()));
    assert_eq!(backend.block_hashes(2..4).unwrap(), vec![headers[2].block_hash(), branch[0].block_hash()]);
    // A branch with less work than the chain it would replace is not followed.
    let short = run(next(&headers[2], bits, 1_002), 5, bits, 1_002);
    served.lock().unwrap().headers = headers[..3].iter().chain(&short).copied().collect();
    assert!(matches!(backend.tip(), Err(BackendError::Invalid(e)) if e.contains("less work")));
    assert_eq!(backend.block_hash(32).unwrap(), Some(branch[29].block_hash()), "nothing changed");
}

#[test]
fn a_server_announcing_an_absurd_height_gets_no_further_than_its_headers() {
    use crate::electrum::headers::tests::{mined, run};
    let headers = run(mined(0x207fffff, 1_000), 3, 0x207fffff, 1_000);
    let (backend, served) = anchored_at_first(HeaderRules::new(bitcoin::Network::Regtest), headers);
    served.lock().unwrap().announce = Some(u32::MAX);
    assert!(matches!(backend.tip(), Err(BackendError::Invalid(e)) if e.contains("no headers up to it")));
    served.lock().unwrap().announce = Some(0);
    assert!(matches!(backend.tip(), Err(BackendError::Invalid(e)) if e.contains("leaves the anchored one")));
    served.lock().unwrap().announce = None;
    assert_eq!(backend.tip().unwrap().height, 2);
}

#[test]
fn a_confirmation_the_server_claims_is_proven_against_the_verified_chain() {
    use crate::electrum::headers::tests::{mined, next};
    let tx = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![],
        output: vec![TxOut { value: bitcoin::Amount::from_sat(1_000), script_pubkey: ScriptBuf::new() }],
    };
    let genesis = mined(0x207fffff, 1_000);
    // A block holding the transaction alone: its merkle root is the txid.
    let mut holding = next(&genesis, 0x207fffff, 1_001);
    holding.merkle_root = TxMerkleNode::from_raw_hash(tx.compute_txid().to_raw_hash());
    while holding.validate_pow(holding.target()).is_err() {
        holding.nonce += 1;
    }
    let regtest = || HeaderRules::new(bitcoin::Network::Regtest);
    let (honest, served) = anchored_at_first(regtest(), vec![genesis, holding]);
    served.lock().unwrap().tx = Some(tx.clone());
    assert_eq!(honest.transaction_info(&tx.compute_txid()).unwrap(), Some((tx.clone(), Some(1))));
    // A server saying it confirmed in a block that does not hold it (to end a cancel's
    // re-broadcasts, say).
    let (liar, served) = anchored_at_first(regtest(), vec![genesis, next(&genesis, 0x207fffff, 1_001)]);
    served.lock().unwrap().tx = Some(tx.clone());
    let e = liar.transaction_info(&tx.compute_txid()).unwrap_err();
    assert!(matches!(&e, BackendError::Invalid(m) if m.contains("not proven")), "{e}");
}

#[test]
fn heights_below_the_trusted_block_are_reached_by_headers_linked_up_to_it() {
    use crate::electrum::headers::tests::{mined, run};
    let headers = run(mined(0x207fffff, 1_000), 2_020, 0x207fffff, 1_000);
    let backend = |served: Vec<Header>| {
        let anchor = Anchor { height: 2_018, hash: headers[2_018].block_hash() };
        let rules = HeaderRules::new(bitcoin::Network::Regtest);
        let chain = HeaderChain::from_anchor(rules, anchor, &headers[2_016..=2_018]).unwrap();
        let backend = ElectrumBackend::new(&server(served).0);
        backend.state.lock().unwrap().chain = Some(chain);
        backend
    };
    let honest = backend(headers.clone());
    assert_eq!(honest.block_hash(10).unwrap(), Some(headers[10].block_hash()));
    assert_eq!(honest.block_hashes(2_014..2_017).unwrap().len(), 3);
    let mut forged = headers.clone();
    forged[10].time += 1;
    let e = backend(forged).block_hash(10).unwrap_err();
    assert!(matches!(&e, BackendError::Invalid(m) if m.contains("not the one the chain names")), "{e}");
}

#[test]
fn a_merkle_branch_proves_its_root_and_nothing_else() {
    // Block 100,000 of mainnet: four transactions; the third one's branch.
    let a: Txid = "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87".parse().unwrap();
    let b: Txid = "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4".parse().unwrap();
    let c: Txid = "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4".parse().unwrap();
    let d: Txid = "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d".parse().unwrap();
    let root: TxMerkleNode =
        "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766".parse().unwrap();
    let pair = |x: sha256d::Hash, y: sha256d::Hash| {
        let mut e = sha256d::Hash::engine();
        e.input(x.as_byte_array());
        e.input(y.as_byte_array());
        sha256d::Hash::from_engine(e)
    };
    let ab = pair(a.to_raw_hash(), b.to_raw_hash());
    let branch = [json!(d.to_string()), json!(ab.to_string())];
    assert_eq!(merkle_root(c, 2, &branch).unwrap(), root);
    assert_ne!(merkle_root(c, 3, &branch).unwrap(), root, "the wrong position proves nothing");
    assert_ne!(merkle_root(d, 2, &branch).unwrap(), root, "another transaction proves nothing");
}
