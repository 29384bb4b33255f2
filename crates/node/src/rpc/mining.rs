//! Mining: Core's `generatetoaddress`, and Vigil's own `vigil_generateblock`, which mines on
//! any known parent with given transactions (competing branches, reorgs).

use serde_json::{json, Value};
use vigil_regtest::{ChainError, RegtestChain};

use super::{code, err, Call, RpcError};

pub(super) fn execute(chain: &mut RegtestChain, call: Call) -> Result<Value, RpcError> {
    match call {
        Call::GenerateToAddress(n, to) => {
            let mut hashes = Vec::new();
            for _ in 0..n {
                let mined = chain.block().coinbase_to(to.clone()).mine().map_err(chain_error)?;
                hashes.push(json!(mined.hash.to_string()));
            }
            Ok(json!(hashes))
        }
        Call::GenerateBlock { parent, to, txs, take_pending } => {
            let mut builder = chain.block().coinbase_to(to).with_transactions(txs).with_pending(take_pending);
            if let Some(p) = parent {
                builder = builder.on(p);
            }
            let mined = builder.mine().map_err(chain_error)?;
            Ok(json!({"hash": mined.hash.to_string(), "height": mined.height, "active": mined.active}))
        }
        other => unreachable!("not a mining call: {other:?}"),
    }
}

fn chain_error(e: ChainError) -> RpcError {
    match e {
        ChainError::BlockRejected { reason, .. } => err(code::VERIFY, reason),
        ChainError::UnknownBlock(_) => err(code::INVALID_ADDRESS_OR_KEY, "Block not found"),
        other => err(code::MISC, other.to_string()),
    }
}
