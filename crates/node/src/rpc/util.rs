//! Core's util RPCs: `estimatesmartfee` and `getdescriptorinfo`.

use serde_json::{json, Value};

use super::{code, err, Call, RpcError};
use crate::descriptor;

pub(super) fn execute(call: Call) -> Result<Value, RpcError> {
    match call {
        // A private regtest chain has no fee market to learn from: Core's answer on a fresh
        // regtest node, whatever the target.
        Call::EstimateSmartFee(_) => {
            Ok(json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0}))
        }
        Call::GetDescriptorInfo(d) => descriptor::info(&d).map_err(|e| err(code::INVALID_ADDRESS_OR_KEY, e)),
        other => unreachable!("not a util call: {other:?}"),
    }
}
