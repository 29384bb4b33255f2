//! A guardian's side of a spend request: what is shown and signed is rebuilt from the
//! guardian's own copy of the policy, never taken from the co-signer's description. Shared
//! by `vigil guardian` and the guardian's web page.

use std::str::FromStr;

use vigil_cosigner::wire::SpendStatus;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::{Address, Amount, OutPoint, Sequence, XOnlyPublicKey};
use vigil_policy::{CompiledPolicy, Policy, SpendInput, VaultKind};

/// Why a request must not be approved: it is not what it claims to be.
#[derive(Debug, thiserror::Error)]
#[error("refusing to sign: {0}. Do not approve; tell the other guardians.")]
pub struct NotSignable(pub String);

/// One output of a spend: how much, to where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Sats.
    pub sat: u64,
    /// The address, or the script's hex when it has none.
    pub to: String,
    /// It goes back to one of the owner's own receive addresses (change).
    pub to_owner: bool,
}

/// How many of the owner's receive addresses a guardian's check recognises as change.
pub const CHANGE_SCAN: u32 = 500;

/// A request checked against the guardian's policy.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The spend to sign, rebuilt from the policy (so its key origins are the policy's).
    pub psbt: Psbt,
    /// What leaves the vault (the unvault's output).
    pub taken_sat: u64,
    /// What the spend pays, read from the transaction itself.
    pub payments: Vec<Payment>,
}

/// An amount as people read it: BTC, then sats.
pub fn btc(sat: u64) -> String {
    format!("{} BTC ({sat} sats)", Amount::from_sat(sat).to_btc())
}

/// The co-signer's own description of a request (unchecked).
pub fn describe(s: &SpendStatus) -> String {
    let mut out = format!(
        "Spend request {}: {}\n  sends {} to {}\n  from vault {}\n  policy version {}; approvals {} of {}; valid for an unvault confirmed by block {}",
        s.id,
        s.state,
        btc(s.amount_sat),
        s.destinations.join(", "),
        s.vault_outpoint,
        s.policy_version,
        s.approvals,
        s.approvals_needed,
        s.approval.expiry_height,
    );
    if s.under_lockdown {
        out.push_str(&format!("\n  {LOCKDOWN_WARNING}"));
    }
    out
}

/// What a guardian is told about a request made under a lockdown.
pub const LOCKDOWN_WARNING: &str =
    "WARNING: requested while the client was LOCKED DOWN (or under duress). Do not approve it on anyone's word.";

impl Checked {
    /// The checked request, in words, from the transaction itself.
    pub fn describe(&self, s: &SpendStatus) -> String {
        let pays: Vec<String> = self
            .payments
            .iter()
            .map(|p| {
                let whose = if p.to_owner { " (back to the owner's wallet: change)" } else { "" };
                format!("{} to {}{whose}", btc(p.sat), p.to)
            })
            .collect();
        let mut shown = format!(
            "Spend request {}: {}\n  takes {} out of vault {} ({})\n  pays {}\n  policy version {}; approvals {} of {}; valid for an unvault confirmed by block {}",
            s.id,
            s.state,
            btc(self.taken_sat),
            s.vault.vault_outpoint,
            s.vault.kind,
            pays.join(", "),
            s.approval.policy_version,
            s.approvals,
            s.approvals_needed,
            s.approval.expiry_height,
        );
        if s.under_lockdown {
            shown.push_str(&format!("\n  {LOCKDOWN_WARNING}"));
        }
        shown
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> NotSignable {
    NotSignable(format!("{what}: {e}"))
}

/// The spend request checked against this guardian's copy of the policy: the vault's unvault
/// rebuilt from it and the request's vault parameters must be the unvault the request names;
/// the spend must be that unvault's only input, at DELAY; the approval's terms must name this
/// spend, this vault and this policy version.
pub fn check(policy: &Policy, s: &SpendStatus) -> Result<Checked, NotSignable> {
    let compiled = CompiledPolicy::new(policy.clone()).map_err(|e| bad("the policy", e))?;
    let v = &s.vault;
    let kind = if v.kind == "guarded" { VaultKind::Guarded } else { VaultKind::Standard };
    let key = |k: &str| XOnlyPublicKey::from_str(k).map_err(|e| bad("a one-time key of the vault", e));
    let plan = compiled
        .plan(v.index, Amount::from_sat(v.amount_sat), kind, key(&v.owner_once)?, key(&v.cosigner_once)?)
        .map_err(|e| bad("the vault", e))?;
    let vault_outpoint = OutPoint::from_str(&v.vault_outpoint).map_err(|e| bad("the vault's outpoint", e))?;
    let graph =
        compiled.build_graph(&plan, vault_outpoint).map_err(|e| bad("the vault's transactions", e))?;
    let unvault = &graph.unvault.tx;
    let given = base64_decode(&s.psbt)
        .ok()
        .and_then(|b| Psbt::deserialize(&b).ok())
        .ok_or_else(|| NotSignable("the request's transaction cannot be read".into()))?;
    let tx = &given.unsigned_tx;
    let u_out = OutPoint { txid: unvault.compute_txid(), vout: 0 };
    let problems = [
        (
            s.approval.unvault_txid != u_out.txid.to_string(),
            "the approval names another unvault than this vault's",
        ),
        (s.approval.vault_outpoint != v.vault_outpoint, "the approval names another vault"),
        (
            tx.input.len() != 1 || tx.input[0].previous_output != u_out,
            "the spend does not spend this vault's unvault alone",
        ),
        (
            tx.input.first().map(|i| i.sequence) != Some(Sequence::from_height(policy.delays.unvault)),
            "the spend is not at the policy's DELAY",
        ),
        (
            s.approval.spend_txid != tx.compute_txid().to_string(),
            "the approval names another spend than the transaction shown",
        ),
        (s.approval.policy_version != policy.version, "the approval names another policy version than yours"),
    ];
    if let Some((_, why)) = problems.iter().find(|(bad, _)| *bad) {
        return Err(NotSignable((*why).into()));
    }
    let descriptors = compiled.vault_descriptors(&plan).map_err(|e| bad("the vault's descriptors", e))?;
    let input = SpendInput {
        outpoint: u_out,
        txout: unvault.output[0].clone(),
        descriptor: descriptors.unvault,
        sequence: tx.input[0].sequence,
    };
    let psbt = vigil_policy::spend_psbt(&[input], tx.output.clone()).map_err(|e| bad("the spend", e))?;
    if psbt.unsigned_tx != *tx {
        return Err(NotSignable("the spend is not a plain spend of the unvault".into()));
    }
    // Change goes back to an intake address of the owner's: recognised, so a guardian sees
    // what actually leaves the household.
    let owners: std::collections::HashSet<_> = if tx.output.len() > 1 {
        (0..CHANGE_SCAN).filter_map(|i| Some(compiled.intake_descriptor(i).ok()?.script_pubkey())).collect()
    } else {
        Default::default()
    };
    let payments = tx
        .output
        .iter()
        .map(|o| Payment {
            sat: o.value.to_sat(),
            to: Address::from_script(&o.script_pubkey, policy.network)
                .map(|a| a.to_string())
                .unwrap_or_else(|_| o.script_pubkey.to_string()),
            to_owner: owners.contains(&o.script_pubkey),
        })
        .collect();
    Ok(Checked { psbt, taken_sat: unvault.output[0].value.to_sat(), payments })
}

/// The lines that differ, `-` old and `+` new.
pub fn diff(old: &str, new: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut out = Vec::new();
    out.extend(a.iter().filter(|l| !b.contains(l)).map(|l| format!("- {l}")));
    out.extend(b.iter().filter(|l| !a.contains(l)).map(|l| format!("+ {l}")));
    out
}

fn base64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s)
}
