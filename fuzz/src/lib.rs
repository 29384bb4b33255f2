//! The bodies of Vigil's fuzz targets: one per parser of input from outside (a peer, a
//! backend, a client, a file). Each takes arbitrary bytes, must never panic, and checks what
//! it can against a reference: [`block_scan`] against rust-bitcoin's deserialization,
//! [`outpoint_index`] against a map.
//!
//! `fuzz/targets` runs them under libFuzzer (`scripts/fuzz.sh`); `cargo test` replays every
//! committed input under `fuzz/corpus/<target>` through them, so a crash once found stays a
//! regression test.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;
use vigil_chain::electrum::headers::{Anchor, HeaderChain, HeaderRules};
use vigil_chain::electrum::ElectrumClient;
use vigil_policy::bitcoin::consensus::{deserialize, Decodable};
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::{Block, Network, OutPoint, Txid};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{CompiledPolicy, Policy};
use vigil_tower::index::{fingerprint, scan_block, OutpointIndex};
use vigil_tower::wire::{ChangePolicy, PanicRequest, RegisterApproval, RegisterVault};
use vigil_tower::Client;

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets, by name: what `fuzz/targets` builds and `cargo test` replays.
pub const TARGETS: &[(&str, Target)] = &[
    ("block_scan", block_scan),
    ("outpoint_index", outpoint_index),
    ("policy_file", policy_file),
    ("tower_request", tower_request),
    ("node_rpc", node_rpc),
    ("electrum_response", electrum_response),
    ("zmq_frames", zmq_frames),
];

/// The tower's block scanner, differentially: whenever rust-bitcoin deserializes the bytes as
/// a block, the scanner parses them too and finds exactly the transactions that spend a
/// watched outpoint or pay the watched script. (The scanner may accept more: it never
/// deserializes what it skips.)
pub fn block_scan(data: &[u8]) {
    let parsed: Option<Block> = deserialize(data).ok();
    // Watch every other input's prevout and the first output's script of the parsed block (or
    // made-up ones), so hits and misses both occur.
    let mut index = OutpointIndex::default();
    let mut pays_to = None;
    if let Some(block) = &parsed {
        for (i, input) in block.txdata.iter().flat_map(|t| &t.input).enumerate() {
            if i % 2 == 0 {
                index.insert(&input.previous_output, i as u32);
            }
        }
        pays_to =
            block.txdata.iter().flat_map(|t| &t.output).next().map(|o| o.script_pubkey.as_bytes().to_vec());
    }
    let scanned = scan_block(data, &index, pays_to.as_deref());
    let Some(block) = parsed else { return };
    let hits = scanned.expect("the scanner parses every block rust-bitcoin parses");
    let expected: Vec<(usize, _)> = block
        .txdata
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.input.iter().any(|i| index.get(&i.previous_output).is_some())
                || t.output.iter().any(|o| Some(o.script_pubkey.as_bytes()) == pays_to.as_deref())
        })
        .map(|(i, t)| (i, t.clone()))
        .collect();
    assert_eq!(hits, expected);
}

/// The tower's outpoint index against a map of fingerprints: inserts and lookups in any
/// order, any number, growing as it goes.
pub fn outpoint_index(data: &[u8]) {
    let mut index = OutpointIndex::with_capacity(data.first().copied().unwrap_or(0) as usize);
    let mut model: HashMap<u64, u32> = HashMap::new();
    for (n, chunk) in data.chunks(13).enumerate() {
        let Some((&op, rest)) = chunk.split_first() else { continue };
        let mut txid = [0u8; 32];
        // Eight bytes steer the fingerprint (collisions are reachable on purpose).
        let head = rest.len().min(8);
        txid[..head].copy_from_slice(&rest[..head]);
        txid[31] = op;
        let vout = rest.get(8..12).map(|v| u32::from_le_bytes(v.try_into().expect("4 bytes"))).unwrap_or(0);
        let outpoint = OutPoint { txid: Txid::from_byte_array(txid), vout };
        if op % 3 == 0 {
            index.get(&outpoint);
        } else {
            index.insert(&outpoint, n as u32);
            model.insert(fingerprint(&outpoint), n as u32);
        }
        assert_eq!(index.get(&outpoint), model.get(&fingerprint(&outpoint)).copied());
        assert_eq!(index.len(), model.len());
    }
}

/// A custody policy file: parsed and validated; a valid one compiles and its descriptors
/// build.
pub fn policy_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = Policy::from_toml(text) else { return };
    if let Ok(compiled) = CompiledPolicy::new(policy) {
        compiled.ranged_descriptors().expect("a compiled policy describes its outputs");
        compiled.intake_address(0).expect("and its addresses");
    }
}

/// The example policy as a tower client, built once.
fn example_client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let text = ExamplePolicy::default().to_toml();
        Client::new(&vigil_tower::policy_id(&text), &text).expect("the example builds")
    })
}

/// Every request body the tower's API takes, selected by the first byte: decoded, then every
/// check that needs no state (a vault's graph rebuilt from the pinned policy and verified, an
/// approval's or a panic's signatures, a new policy).
pub fn tower_request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let client = example_client();
    match which % 4 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<RegisterVault>(body) {
                let _ = vigil_tower::registration::checked_vault(client, &req);
            }
        }
        1 => {
            if let Ok(req) = serde_json::from_slice::<RegisterApproval>(body) {
                let _ = vigil_tower::registration::parse_approval(&req);
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<PanicRequest>(body) {
                let _ = vigil_tower::governance::panic_signers(&req);
            }
        }
        _ => {
            if let Ok(req) = serde_json::from_slice::<ChangePolicy>(body) {
                if let Ok(new) = Policy::from_toml(&req.policy) {
                    let _ = vigil_tower::client::only_tightens(&client.policy, &new);
                    let _ = Client::new(&client.id, &req.policy);
                }
            }
        }
    }
}

/// `vigil node`'s JSON-RPC (single requests and batches) parsed into typed calls, and its
/// REST paths.
pub fn node_rpc(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vigil_node::rest_block_hash(text);
    }
    let Ok(request) = serde_json::from_slice::<Value>(data) else { return };
    let requests = match request {
        Value::Array(batch) => batch,
        one => vec![one],
    };
    for r in &requests {
        let e = vigil_node::rpc::envelope(r);
        let result = e.call.and_then(|(method, params)| vigil_node::rpc::Call::parse(&method, &params));
        let _ = vigil_node::rpc::response(&e.id, e.v2, result.map(|_| Value::Null));
    }
}

/// What an Electrum server answers: the bytes are the server's side of the connection. The
/// client asks its questions in turn and must take any answer without panicking; each line
/// is also read as a notification, a history, a header, a merkle proof.
pub fn electrum_response(data: &[u8]) {
    let mut client = ElectrumClient::new(Scripted { replies: std::io::Cursor::new(data.to_vec()) });
    let script = vigil_policy::bitcoin::Script::new();
    let _ = client.subscribe_headers();
    let _ = client.history(script);
    let _ = client.transaction(&Txid::all_zeros());
    let _ = client.subscribe_script(script);
    let _ = client.call_many(&[("a", Value::Null), ("b", Value::Null)]);
    let _ = client.notifications();
    let rules = HeaderRules::new(Network::Bitcoin);
    for line in data.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
        let _ = vigil_chain::electrum::client::parse_notification(&v);
        let _ = vigil_chain::electrum::client::parse_history(&v);
        if let Ok(header) = vigil_chain::electrum::header_from_hex(&v) {
            let _ = rules.check_work(1, &header);
            let _ = rules.check_time(1, &header, 1_800_000_000);
            let _ = rules.check_difficulty(4032, &header, Some(header.bits));
        }
        if let Some(branch) = v.get("merkle").and_then(Value::as_array) {
            let pos = v.get("pos").and_then(Value::as_u64).unwrap_or(0);
            let _ = vigil_chain::electrum::merkle_root(Txid::all_zeros(), pos, branch);
        }
    }
    if let Ok(header) = vigil_policy::bitcoin::block::Header::consensus_decode(&mut &data[..]) {
        let _ = rules.check_work(0, &header);
    }
    header_chain(data);
}

/// The bytes as a run of headers a server sends: the first anchors a chain (on regtest, whose
/// work is easy to meet, and on mainnet), the rest extend it, then extend it again from a
/// height the first byte picks (a reorganisation); then the last anchors one that reaches down
/// to the first.
fn header_chain(data: &[u8]) {
    use vigil_policy::bitcoin::block::Header;
    let headers: Vec<Header> =
        data.chunks_exact(80).filter_map(|raw| Header::consensus_decode(&mut &raw[..]).ok()).collect();
    let Some(first) = headers.first() else { return };
    for network in [Network::Regtest, Network::Bitcoin] {
        let anchor = Anchor { height: 0, hash: first.block_hash() };
        let Ok(mut chain) = HeaderChain::from_anchor(HeaderRules::new(network), anchor, &headers[..1]) else {
            continue;
        };
        let _ = chain.extend(1, &headers[1..], 1_800_000_000);
        let start = u32::from(data[0]) % (chain.tip() + 2);
        let _ = chain.extend(start, &headers[1..], 1_800_000_000);
        if let Some(hash) = chain.hash(chain.tip()) {
            assert_eq!(chain.height_of(&hash), Some(chain.tip()));
        }
    }
    // Anchored at the last, its period starting at the header the first byte picks; those
    // before it offered as the headers below.
    let split = usize::from(data[0]) % headers.len();
    let period = 2_016;
    let anchor = Anchor {
        height: (period + headers.len() - 1 - split) as u32,
        hash: headers[headers.len() - 1].block_hash(),
    };
    if let Ok(mut chain) =
        HeaderChain::from_anchor(HeaderRules::new(Network::Regtest), anchor, &headers[split..])
    {
        let _ = chain.prepend((period - split) as u32, &headers[..split]);
    }
}

/// The server's side of an Electrum connection, scripted.
struct Scripted {
    replies: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.replies.read(buf)
    }
}

impl std::io::BufRead for Scripted {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.replies.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.replies.consume(amt)
    }
}

impl std::io::Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A ZMQ message as a subscriber receives it: frames (each a length byte and its bytes, as
/// many as the data holds), then its notification, and a `sequence` body read.
pub fn zmq_frames(data: &[u8]) {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        frames.push(&tail[..len]);
        rest = &tail[len..];
    }
    if let Some(n) = vigil_chain::zmq::Notification::from_frames(&frames) {
        let _ = n.sequence();
        assert_eq!(frames.len(), 3);
    }
}
