//! A guardian's side of a spend request: what is shown and signed is rebuilt from the
//! guardian's own copy of the policy, never taken from the co-signer's description. Shared
//! by `vigil guardian` and the guardian's web page.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::OnceLock;

use vigil_cosigner::wire::{CosignerAlarm, ProposedPanic, SpendStatus};
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::{Address, Amount, OutPoint, ScriptBuf, Sequence, XOnlyPublicKey};
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
    /// The fee: what leaves the vault and is not paid to anyone.
    pub fee_sat: u64,
    /// The vault's kind, one of the two a policy makes.
    pub kind: VaultKind,
}

/// The states a spend request is in, as the co-signer names them.
const STATES: [&str; 4] = ["waiting", "approved", "denied", "expired"];

/// A request's state as shown: one the co-signer sends, or said to be none of them (its
/// text is not shown: runs of spaces could make it look like another line).
fn state_word(s: &SpendStatus) -> &str {
    STATES.iter().find(|k| **k == s.state).copied().unwrap_or("in an unknown state")
}

/// `text` from the co-signer as it may be shown on a terminal: control characters (a line
/// break, an escape sequence that hides or rewrites what follows) and invisible or
/// direction-changing characters become `?`, so a co-signer cannot make the text before "Type
/// APPROVE" say something else than it does.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let hidden = matches!(
                c,
                '\u{00AD}'
                    | '\u{061C}'
                    | '\u{180E}'
                    | '\u{200B}'..='\u{200F}'
                    | '\u{2028}'..='\u{202E}'
                    | '\u{2060}'..='\u{2069}'
                    | '\u{FEFF}'
                    | '\u{FFF9}'..='\u{FFFB}'
                    | '\u{E0000}'..='\u{E007F}'
            );
            if c.is_control() || hidden {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// An amount as people read it: BTC, then sats.
pub fn btc(sat: u64) -> String {
    format!("{} BTC ({sat} sats)", Amount::from_sat(sat).to_btc())
}

/// About how long `blocks` blocks take, in words (6 an hour).
pub fn about(blocks: u32) -> String {
    let minutes = u64::from(blocks) * 10;
    match minutes {
        0 => "now".into(),
        m if m < 90 => format!("about {m} minutes"),
        m if m < 48 * 60 => format!("about {} hours", m.div_ceil(60)),
        m => format!("about {} days", m.div_ceil(24 * 60)),
    }
}

/// The co-signer's own description of a request (unchecked).
pub fn describe(s: &SpendStatus) -> String {
    let mut out = format!(
        "Spend request {}: {}\n  sends {} to {}\n  from vault {}\n  policy version {}; approvals {} of {}; valid for an unvault confirmed by block {}",
        s.id,
        state_word(s),
        btc(s.amount_sat),
        printable(&s.destinations.join(", ")),
        printable(&s.vault_outpoint),
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
                let whose = if p.to_owner { format!(" ({TO_OWNER})") } else { String::new() };
                format!("{} to {}{whose}", btc(p.sat), p.to)
            })
            .collect();
        let mut shown = format!(
            "Spend request {}: {}\n  takes {} out of vault {} ({})\n  pays {}; fee {}\n  policy version {}; approvals {} of {}; valid for an unvault confirmed by block {}",
            s.id,
            state_word(s),
            btc(self.taken_sat),
            s.vault.vault_outpoint,
            self.kind.name(),
            pays.join(", "),
            btc(self.fee_sat),
            s.approval.policy_version,
            s.approvals,
            s.approvals_needed,
            s.approval.expiry_height,
        );
        if s.under_lockdown {
            shown.push_str(&format!("\n  {LOCKDOWN_WARNING}"));
        }
        if !self.pays_out() {
            shown.push_str(&format!("\n  {NOTHING_OUT_WARNING}"));
        }
        shown
    }

    /// Whether anything is paid to an address that is not the owner's.
    pub fn pays_out(&self) -> bool {
        self.payments.iter().any(|p| !p.to_owner)
    }
}

/// What an output to one of the owner's receive addresses is, in words: not safe in a vault.
pub const TO_OWNER: &str =
    "to one of the owner's receive addresses, which the owner and the co-signer can move";

/// What a guardian is told about a vault spend that pays no one outside the household.
pub const NOTHING_OUT_WARNING: &str = "WARNING: this spend pays no one outside the household: it takes the coins out of \
     the vault to an address the owner and the co-signer can move at once. Ask the owner why before approving.";

fn bad(what: &str, e: impl std::fmt::Display) -> NotSignable {
    NotSignable(format!("{what}: {e}"))
}

/// Checks spend requests against one guardian's copy of the policy.
pub struct Checker {
    /// The policy spends are judged under now.
    current: Policy,
    /// Every policy that applied, newest first: a vault keeps the scripts it was made under.
    compiled: Vec<CompiledPolicy>,
    /// The owner's first [`CHANGE_SCAN`] receive scripts under each: derived at the first
    /// check, not for commands that check nothing.
    owners: OnceLock<HashSet<ScriptBuf>>,
}

impl Checker {
    /// A checker for `policy`, which never changed.
    pub fn new(policy: &Policy) -> Result<Checker, NotSignable> {
        Checker::following(std::slice::from_ref(policy))
    }

    /// A checker for a policy that changed: `history` oldest first, the current one last
    /// ([`crate::policy_chain::Followed::history`]).
    pub fn following(history: &[Policy]) -> Result<Checker, NotSignable> {
        let current = history.last().ok_or_else(|| NotSignable("no policy".into()))?.clone();
        let compiled = history
            .iter()
            .rev()
            .map(|p| CompiledPolicy::new(p.clone()).map_err(|e| bad("the policy", e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Checker { current, compiled, owners: OnceLock::new() })
    }

    fn owners(&self) -> &HashSet<ScriptBuf> {
        self.owners.get_or_init(|| {
            self.compiled
                .iter()
                .flat_map(|c| {
                    (0..CHANGE_SCAN).filter_map(|i| Some(c.intake_descriptor(i).ok()?.script_pubkey()))
                })
                .collect()
        })
    }

    /// The policy requests are judged under now.
    pub fn current(&self) -> &Policy {
        &self.current
    }

    /// The spend request checked against the policy: the vault's unvault rebuilt from the
    /// policy it was made under (the current one or an earlier one) with the request's vault
    /// parameters must be the unvault the request names; the spend must be that unvault's
    /// only input, at that policy's DELAY; the approval's terms must name this spend, this
    /// vault and the current policy version.
    pub fn check(&self, s: &SpendStatus) -> Result<Checked, NotSignable> {
        let v = &s.vault;
        if !STATES.contains(&s.state.as_str()) {
            return Err(bad(
                "the request's state",
                format!("{:?} is none the co-signer sends", printable(&s.state)),
            ));
        }
        let kind = VaultKind::from_name(&v.kind).ok_or_else(|| {
            bad("the vault's kind", format!("{:?} is neither standard nor guarded", v.kind))
        })?;
        let key = |k: &str| XOnlyPublicKey::from_str(k).map_err(|e| bad("a one-time key of the vault", e));
        let (owner_once, cosigner_once) = (key(&v.owner_once)?, key(&v.cosigner_once)?);
        let vault_outpoint =
            OutPoint::from_str(&v.vault_outpoint).map_err(|e| bad("the vault's outpoint", e))?;
        // The policy whose unvault is the one the approval names; the newest if none is.
        let mut newest = None;
        let mut found = None;
        for compiled in &self.compiled {
            // A vault an earlier policy made may not fit a later one (a lower limit): skip it.
            let Ok(plan) =
                compiled.plan(v.index, Amount::from_sat(v.amount_sat), kind, owner_once, cosigner_once)
            else {
                continue;
            };
            let Ok(graph) = compiled.build_graph(&plan, vault_outpoint) else { continue };
            if graph.unvault.tx.compute_txid().to_string() == s.approval.unvault_txid {
                found = Some((compiled, plan, graph));
                break;
            }
            newest.get_or_insert((compiled, plan, graph));
        }
        let (compiled, plan, graph) = found
            .or(newest)
            .ok_or_else(|| NotSignable("no version of the policy makes this vault".into()))?;
        let policy = compiled.policy();
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
            (
                s.approval.policy_version != self.current.version,
                "the approval names another policy version than yours",
            ),
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
        let payments = tx
            .output
            .iter()
            .map(|o| Payment {
                sat: o.value.to_sat(),
                to: Address::from_script(&o.script_pubkey, policy.network)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| o.script_pubkey.to_string()),
                to_owner: self.owners().contains(&o.script_pubkey),
            })
            .collect();
        let taken_sat = unvault.output[0].value.to_sat();
        let paid: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        Ok(Checked { psbt, taken_sat, payments, fee_sat: taken_sat.saturating_sub(paid), kind })
    }
}

/// The restore a guardian confirms: the number the owner's new device showed them, as they
/// typed it, which must be `latest`'s (the co-signer's latest restore). A guardian types it
/// rather than compares it: a restore someone else made since (a captor with the phrase) has
/// another number.
pub fn typed_restore(typed: &str, latest: u32) -> Result<u32, String> {
    match typed.trim().parse::<u32>() {
        Ok(n) if n == latest => Ok(n),
        Ok(n) => Err(format!(
            "the owner's device showed restore number {n}, and the latest restore is number {latest}: someone \
             restored the wallet since. Nothing was confirmed: lock the wallet down and tell the other guardians"
        )),
        Err(_) => Err(format!("{:?} is not a restore number: nothing was confirmed", typed.trim())),
    }
}

/// How far ahead a panic may act (the co-signer's and the towers' limit).
pub const PANIC_WINDOW: u32 = 144;

/// A panic another guardian proposed that is still open to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPanic {
    /// The co-signer's event that carries it.
    pub alarm: i64,
    /// What a guardian signs to join it.
    pub panic: vigil_tower::wire::Panic,
    /// The guardians who signed it so far (1-based, as the policy lists them).
    pub proposers: Vec<usize>,
}

/// A proposed panic checked: signed by guardians of `policy`, for client `client`, acting
/// within the next [`PANIC_WINDOW`] blocks of the towers' `tip` (`None`: none answered).
/// Returns it and its proposers (1-based), or why it must not be signed.
pub fn check_panic(
    policy: &Policy,
    client: &str,
    proposed: ProposedPanic,
    tip: Option<u32>,
) -> Result<(vigil_tower::wire::Panic, Vec<usize>), String> {
    let panic = vigil_tower::wire::Panic {
        policy_id: client.to_owned(),
        id: proposed.id,
        not_after_height: proposed.not_after_height,
    };
    let signers = vigil_tower::registration::verified_signers(&proposed.signatures, &panic.digest())
        .map_err(|_| "a signature of this panic does not verify".to_owned())?;
    let proposers: Vec<usize> = (policy.guardians.keys.iter().enumerate())
        .filter(|(_, g)| signers.contains(&g.auth_key()))
        .map(|(i, _)| i + 1)
        .collect();
    if proposers.is_empty() {
        return Err("no guardian of your policy signed this panic".into());
    }
    let tip = tip.ok_or("no watchtower can be reached to read the chain's height")?;
    if panic.not_after_height <= tip || panic.not_after_height > tip + PANIC_WINDOW {
        return Err(format!(
            "this panic acts until block {}, and the chain is at block {tip}: a panic acts within the next \
             {PANIC_WINDOW} blocks",
            panic.not_after_height
        ));
    }
    Ok((panic, proposers))
}

/// The panic of the co-signer's feed `alarms` that checks, still waits for signatures, was
/// not signed by this guardian (`me`), and has at least half its window left at the towers'
/// `tip`: of those, the one most guardians signed, then the newest. A guardian asking for a
/// panic joins that one: a second panic would split the signatures, and neither reach the
/// quorum (and a rogue guardian proposing a fresh one before each other guardian joins must
/// not split them either). One nearly run out is not joined: a rogue guardian proposing short
/// ones could otherwise keep the others from ever starting theirs.
pub fn open_panic(
    alarms: Vec<CosignerAlarm>,
    policy: &Policy,
    client: &str,
    me: &XOnlyPublicKey,
    tip: u32,
) -> Option<OpenPanic> {
    let mine = me.to_string();
    let needed = policy.guardians.threshold as usize;
    alarms
        .into_iter()
        .filter_map(|a| Some((a.id, a.panic?)))
        .filter(|(_, p)| !p.signatures.iter().any(|s| s.key == mine))
        .filter_map(|(alarm, proposed)| {
            let (panic, proposers) = check_panic(policy, client, proposed, Some(tip)).ok()?;
            let open = proposers.len() < needed && panic.not_after_height >= tip + PANIC_WINDOW / 2;
            open.then_some(OpenPanic { alarm, panic, proposers })
        })
        .max_by_key(|o| (o.proposers.len(), o.alarm))
}

/// What changes from `old` to `new`, section by section (a TOML `[table]`, the nth
/// `[[array]]` entry): before a section's changes its header (`  ` unchanged), then `- ` a
/// line removed and `+ ` a line added, in order within the section. A line moved from one
/// section to another shows as removed from one and added to the other, even when the same
/// text stands in both (as `threshold = 2` may in `[owner]` and `[guardians]`).
pub fn diff(old: &str, new: &str) -> Vec<String> {
    let (a, b) = (sections(old), sections(new));
    let mut out = Vec::new();
    // An array entry is named by its place: the 2nd of the `[[towers]]`.
    let named = |(header, nth): &(String, usize), mark: &str, out: &mut Vec<String>| match header {
        h if h.is_empty() => {}
        h if h.starts_with("[[") => out.push(format!("{mark}{h} #{}", nth + 1)),
        h => out.push(format!("{mark}{h}")),
    };
    for (key, new_lines) in &b {
        match a.iter().find(|(k, _)| k == key) {
            Some((_, old_lines)) => {
                let changes = ordered_diff(old_lines, new_lines);
                if !changes.is_empty() {
                    named(key, "  ", &mut out);
                    out.extend(changes);
                }
            }
            None => {
                named(key, "+ ", &mut out);
                out.extend(new_lines.iter().map(|l| format!("+ {l}")));
            }
        }
    }
    for (key, old_lines) in a.iter().filter(|(k, _)| !b.iter().any(|(n, _)| n == k)) {
        named(key, "- ", &mut out);
        out.extend(old_lines.iter().map(|l| format!("- {l}")));
    }
    out
}

/// A TOML text's sections: (header, its occurrence among same headers) and their lines.
type Sections<'t> = Vec<((String, usize), Vec<&'t str>)>;

fn sections(text: &str) -> Sections<'_> {
    let mut out: Sections<'_> = vec![((String::new(), 0), Vec::new())];
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            let header = line.trim().to_owned();
            let seen = out.iter().filter(|((h, _), _)| *h == header).count();
            out.push(((header, seen), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line);
        }
    }
    out
}

/// Lines removed (`- `) and added (`+ `), in order: a longest common subsequence.
fn ordered_diff(a: &[&str], b: &[&str]) -> Vec<String> {
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

fn base64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s)
}

#[cfg(test)]
mod tests {
    use super::{diff, open_panic, printable, typed_restore, PANIC_WINDOW};
    use vigil_cosigner::wire::{CosignerAlarm, ProposedPanic};
    use vigil_policy::example::{auth_keypair, ExamplePolicy};
    use vigil_policy::Policy;

    #[test]
    fn a_guardian_joins_the_open_panic_most_guardians_signed_then_the_newest() {
        let example = ExamplePolicy {
            seed: "open panics".into(),
            guardians: 5,
            guardian_threshold: 4,
            ..ExamplePolicy::default()
        };
        let policy = Policy::from_toml(&example.to_toml()).unwrap();
        let keys = example.keys();
        let tip = 1_000;
        let proposal = |alarm: i64, id: &str, not_after: u32, signers: &[usize]| {
            let panic = vigil_tower::wire::Panic {
                policy_id: "client".into(),
                id: id.into(),
                not_after_height: not_after,
            };
            let signatures = signers
                .iter()
                .map(|g| vigil_tower::wire::sign(&panic.digest(), &auth_keypair(&keys.guardians[*g])))
                .collect();
            CosignerAlarm {
                id: alarm,
                kind: "panic-proposed".into(),
                message: String::new(),
                time: 0,
                panic: Some(ProposedPanic { id: id.into(), not_after_height: not_after, signatures }),
                policy: None,
            }
        };
        let me = auth_keypair(&keys.guardians[4]).x_only_public_key().0;
        let joined =
            |alarms: Vec<CosignerAlarm>| open_panic(alarms, &policy, "client", &me, tip).map(|o| o.panic.id);
        let window = tip + PANIC_WINDOW;
        // Two guardians signed the older one; a rogue guardian's fresh one must not split them.
        let older = proposal(1, "older", window, &[0, 1]);
        assert_eq!(joined(vec![older.clone(), proposal(2, "newer", window, &[2])]), Some("older".into()));
        assert_eq!(
            joined(vec![proposal(1, "a", window, &[0]), proposal(2, "b", window, &[1])]),
            Some("b".into())
        );
        // Not one this guardian signed, nearly run out, at the quorum, or not of a guardian.
        assert_eq!(joined(vec![proposal(1, "mine", window, &[4])]), None);
        assert_eq!(joined(vec![proposal(1, "late", tip + PANIC_WINDOW / 2 - 1, &[0])]), None);
        assert_eq!(joined(vec![proposal(1, "done", window, &[0, 1, 2, 3])]), None);
        let mut stranger = proposal(1, "stranger", window, &[]);
        let digest = vigil_tower::wire::Panic {
            policy_id: "client".into(),
            id: "stranger".into(),
            not_after_height: window,
        }
        .digest();
        let outsider = auth_keypair(
            &ExamplePolicy { seed: "strangers".into(), ..ExamplePolicy::default() }.keys().guardians[0],
        );
        stranger.panic.as_mut().unwrap().signatures = vec![vigil_tower::wire::sign(&digest, &outsider)];
        assert_eq!(joined(vec![stranger]), None);
    }

    #[test]
    fn a_restore_is_confirmed_by_the_number_typed_and_only_the_latest() {
        assert_eq!(typed_restore(" 3\n", 3), Ok(3));
        assert!(typed_restore("2", 3).unwrap_err().contains("someone restored the wallet since"));
        assert!(typed_restore("three", 3).unwrap_err().contains("not a restore number"));
    }

    #[test]
    fn text_shown_on_a_terminal_cannot_hide_or_rewrite_what_follows() {
        assert_eq!(printable("waiting"), "waiting");
        assert_eq!(printable("a\nb\u{1b}[8mc\r\u{7}"), "a?b?[8mc??");
        assert_eq!(printable("x\u{202E}y\u{200B}z\u{2066}"), "x?y?z?", "direction and invisible marks");
        assert_eq!(printable("bc1q\u{0085}é"), "bc1q?é", "a C1 control; letters stay");
        assert_eq!(
            printable("a\u{2028}b\u{00AD}c\u{E0041}"),
            "a?b?c?",
            "a line separator, a soft hyphen, a tag"
        );
    }

    #[test]
    fn a_line_moved_between_sections_shows_as_moved() {
        let old = "version = 1\n[owner]\nthreshold = 1\n[guardians]\nthreshold = 2\n";
        let new = "version = 2\n[owner]\nthreshold = 2\n[guardians]\nthreshold = 1\n";
        assert_eq!(
            diff(old, new),
            [
                "- version = 1",
                "+ version = 2",
                "  [owner]",
                "- threshold = 1",
                "+ threshold = 2",
                "  [guardians]",
                "- threshold = 2",
                "+ threshold = 1",
            ]
        );
        // The second of two array entries, changed, is named as the one that changed.
        let towers = "[[towers]]\nurl = \"a\"\n[[towers]]\nurl = \"b\"\n";
        assert_eq!(
            diff(towers, &towers.replace("\"b\"", "\"c\"")),
            ["  [[towers]] #2", "- url = \"b\"", "+ url = \"c\""]
        );
        assert_eq!(diff(towers, "[[towers]]\nurl = \"a\"\n"), ["- [[towers]] #2", "- url = \"b\""]);
        // The same lines, in another order, are a change (a set difference would show none).
        assert!(!diff("a\nb\n", "b\na\n").is_empty());
        assert!(diff("same\n", "same\n").is_empty());
    }
}
