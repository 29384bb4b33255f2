//! Core's network RPC `getnetworkinfo`, answered as an isolated regtest bitcoind answers it
//! (`-listen=0`, no proxy): no peers, nothing reachable but IPv4 and IPv6, relaying.

use serde_json::{json, Value};
use vigil_regtest::bitcoin::Amount;
use vigil_regtest::relay::{INCREMENTAL_RELAY_FEE_SAT_PER_KVB, MIN_RELAY_FEE_SAT_PER_KVB};

use super::{Call, RpcError};
use crate::json::btc;

/// The Bitcoin Core version whose validation engine and RPC dialect this node carries (the
/// source the kernel crate vendors), as `CLIENT_VERSION`.
pub const CORE_VERSION: u32 = 31_99_00;
/// `PROTOCOL_VERSION`.
const PROTOCOL_VERSION: u32 = 70017;
/// `NODE_NETWORK | NODE_WITNESS | NODE_NETWORK_LIMITED | NODE_P2P_V2`: what bitcoind offers.
const LOCAL_SERVICES: u64 = 0x1 | 0x8 | 0x400 | 0x800;

pub(super) fn execute(call: Call) -> Result<Value, RpcError> {
    match call {
        Call::GetNetworkInfo => {
            let network = |name: &str, reachable: bool| {
                json!({
                    "name": name,
                    "limited": !reachable,
                    "reachable": reachable,
                    "proxy": "",
                    "proxy_randomize_credentials": false,
                })
            };
            let v = CORE_VERSION;
            Ok(json!({
                "version": v,
                // BIP 14, with a comment saying which node this is (as `-uacomment` would).
                "subversion": format!("/Satoshi:{}.{}.{}(vigil-node)/", v / 10_000, v / 100 % 100, v % 100),
                "protocolversion": PROTOCOL_VERSION,
                "localservices": format!("{LOCAL_SERVICES:016x}"),
                "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
                "localrelay": true,
                "timeoffset": 0,
                "networkactive": true,
                "connections": 0,
                "connections_in": 0,
                "connections_out": 0,
                "networks": [
                    network("ipv4", true),
                    network("ipv6", true),
                    network("onion", false),
                    network("i2p", false),
                    network("cjdns", false),
                ],
                "relayfee": btc(Amount::from_sat(MIN_RELAY_FEE_SAT_PER_KVB)),
                "incrementalfee": btc(Amount::from_sat(INCREMENTAL_RELAY_FEE_SAT_PER_KVB)),
                "localaddresses": [],
                "warnings": [],
            }))
        }
        other => unreachable!("not a network call: {other:?}"),
    }
}
