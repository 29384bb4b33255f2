//! `vigil guardian`: what a guardian runs on their own machine. Every command shows a person
//! what they are about to sign (amount, destination, vault, policy version, and whether the
//! request came under a lockdown) before signing it with the guardian's key, which is sealed
//! at rest under their passphrase.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use vigil_client::cosigner::CosignerClient;
use vigil_client::guardian::{btc, describe, Checker};
use vigil_client::policies::checked_record_file;
use vigil_cosigner::wire::{self, SpendStatus};
use vigil_cosigner::MasterKey;
use vigil_policy::bitcoin::hex::DisplayHex;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::Network;
use vigil_policy::Policy;

/// Where the guardian's key and the client's policy are.
#[derive(Args)]
pub struct GuardianArgs {
    /// The guardian's sealed key file (`vigil guardian init`).
    #[arg(long, global = true, default_value = "guardian.key")]
    key: PathBuf,
    /// The client's pinned policy file (names the co-signer and the client).
    #[arg(long, global = true)]
    policy: Option<PathBuf>,
    /// A file whose first line is the key's passphrase (else $VIGIL_PASSPHRASE, else asked).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Print JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: GuardianCommand,
}

#[derive(Subcommand)]
enum GuardianCommand {
    /// Create the guardian's key; prints the key and auth key to hand to the owner.
    Init {
        /// The network (regtest, signet, testnet4, bitcoin).
        #[arg(long, default_value = "regtest")]
        network: String,
    },
    /// The spend requests waiting for guardians.
    Pending,
    /// One spend request, in full.
    Show { id: u64 },
    /// Approve a spend request (asks for confirmation unless --yes).
    Approve {
        id: u64,
        #[arg(long)]
        yes: bool,
    },
    /// Deny a spend request: final for it (asks for confirmation unless --yes).
    Deny {
        id: u64,
        #[arg(long)]
        yes: bool,
    },
    /// Freeze the client now: spends are refused and every tower cancels every unvault.
    Lockdown {
        /// How long, in blocks (6 an hour).
        #[arg(long, default_value_t = 144)]
        blocks: u32,
        /// The owner may be under duress (a duress alarm came): if the co-signer does not
        /// answer, the towers are still told to keep this lockdown from the owner's device.
        /// When it answers, it says itself whether the owner typed the duress code.
        #[arg(long)]
        silent: bool,
    },
    /// Sign the early lift of a lockdown (a duress one too): once the guardians' quorum signed,
    /// it ends after the governance wait (a week or more), at the co-signer and every tower.
    /// The first guardian proposes the height, the others sign the same one. Asks for
    /// confirmation unless --yes.
    Lift {
        #[arg(long)]
        yes: bool,
    },
    /// Sign a panic: sweep every vault to the deep vault once the guardians' quorum signed.
    /// Without --id, joins the panic another guardian started if one waits for signatures
    /// (two panics would split the signatures), else proposes a new one (--not-after needed)
    /// and prints what the other guardians must sign.
    Panic {
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        not_after: Option<u32>,
        /// Start a new panic even if another guardian's waits (you do not trust who started it).
        #[arg(long, conflicts_with = "id")]
        new: bool,
    },
    /// Sign the owner's recovery: adds this guardian's signature to the recovery leaves (the
    /// owner and the guardians after T_RECOVER) or the deep vault's paths of the PSBT file
    /// `vigil recover` wrote, and to nothing else. Asks for confirmation unless --yes.
    SignRecovery {
        /// The PSBT file (rewritten with the signature).
        file: PathBuf,
        #[arg(long)]
        yes: bool,
    },
    /// Confirm the owner's restore on a new device, once you have spoken to the owner: until
    /// the guardians' quorum confirms it, every vault spend waits for your approvals.
    ConfirmRestore {
        /// The restore number the owner's new device showed (asked for unless given).
        #[arg(long)]
        restore: Option<String>,
        /// Do not ask (with --restore, or for the latest restore).
        #[arg(long)]
        yes: bool,
    },
    /// Your guardian page in your browser: requests, alarms, lockdown, panic and policy
    /// changes, served on this computer only. Approving still needs your passphrase.
    Ui {
        #[command(flatten)]
        listen: crate::ui::ListenArgs,
    },
    /// Sign a new version of the policy (shows what changes first).
    Policy {
        /// The new policy file.
        file: PathBuf,
        #[arg(long)]
        yes: bool,
    },
}

fn passphrase(file: Option<&Path>) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if file.is_some() || std::env::var_os("VIGIL_PASSPHRASE").is_some() {
        return Ok(vigil_keystore::read_passphrase(file, Some("VIGIL_PASSPHRASE"))?);
    }
    eprint!("Passphrase of your guardian key: ");
    std::io::stderr().flush()?;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(zeroize::Zeroizing::new(line.trim_end().to_owned()))
}

/// A network by the name a user types.
pub(crate) fn network(name: &str) -> anyhow::Result<Network> {
    Ok(match name {
        "bitcoin" | "mainnet" => Network::Bitcoin,
        "testnet" => Network::Testnet,
        "testnet4" => Network::Testnet4,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => bail!("--network: unknown network {other:?}"),
    })
}

fn confirm(what: &str, word: &str) -> anyhow::Result<()> {
    eprintln!("{what}");
    eprint!("Type {word} to sign it, anything else to stop: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != word {
        bail!("stopped: nothing was signed");
    }
    Ok(())
}

/// `vigil guardian sign-recovery`: this guardian's key signs only the policy's own recovery
/// leaves on inputs waiting T_RECOVER, and the deep vault's paths (rebuilt here from the
/// guardian's copy of the policy, at the index the PSBT names), always over the whole
/// transaction. No other leaf is signed, whatever the PSBT says: not the recovery output's
/// co-signer path, not a vault spend.
fn sign_recovery(
    versions: &[vigil_policy::CompiledPolicy],
    keys: &MasterKey,
    file: &Path,
    yes: bool,
    json: bool,
) -> anyhow::Result<()> {
    use vigil_policy::bitcoin::taproot::{LeafVersion, TapLeafHash};
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut psbt = Psbt::deserialize(&base64_decode(text.trim())?)
        .map_err(|e| anyhow::anyhow!("{} is not a PSBT: {e}; nothing was signed", file.display()))?;
    let policy = versions[0].policy();
    let mine = keys.fingerprint();
    let mut total_in = 0u64;
    for (i, input) in psbt.inputs.iter_mut().enumerate() {
        let refuse = |why: &str| anyhow::anyhow!("input {i}: {why}; nothing was signed");
        let sequence = psbt.unsigned_tx.input[i].sequence;
        let spent = input.witness_utxo.as_ref().ok_or_else(|| refuse("the coin spent is not described"))?;
        if !spent.script_pubkey.is_p2tr() {
            return Err(refuse("not a coin of this policy (every one is taproot)"));
        }
        total_in += spent.value.to_sat();
        // Nothing but the script leaves below gets a signature: no ECDSA, no key path.
        input.bip32_derivation.clear();
        let mut signable = 0;
        for (_, (leaves, (fingerprint, path))) in input.tap_key_origins.iter_mut() {
            if *fingerprint != mine {
                continue;
            }
            use vigil_policy::bitcoin::bip32::ChildNumber::Normal;
            // A branch some version's outputs derive keys on (ADR 0005: format 2 has one per leaf).
            let known = |branch: u32| {
                versions.iter().any(|c| {
                    let format = c.policy().format;
                    [
                        vigil_policy::KeyChain::Intake,
                        vigil_policy::KeyChain::IntakeChange,
                        vigil_policy::KeyChain::Vault,
                    ]
                    .iter()
                    .any(|chain| chain.branches(format).contains(&branch))
                })
            };
            let index = match path.as_ref() {
                [.., Normal { index: branch }, Normal { index }] if known(*branch) => *index,
                _ => return Err(refuse("this guardian's key is named with no address on its chains")),
            };
            // The recovery leaves when the input waits T_RECOVER; the deep vault's fast path
            // (which also needs the backup key, the co-signer and every guardian); its slow
            // path when the input waits LONG: of any version the guardians' quorum signed.
            let mut scripts = Vec::new();
            for compiled in versions {
                let delays = &compiled.policy().delays;
                let deep = compiled.deep_vault_leaves(index)?;
                scripts.push(deep.fast);
                if sequence == vigil_policy::bitcoin::Sequence::from_height(delays.recovery) {
                    scripts.extend(compiled.recovery_leaf_scripts(index)?);
                }
                if sequence == vigil_policy::bitcoin::Sequence::from_height(delays.deep_vault) {
                    scripts.push(deep.slow);
                }
            }
            let allowed: Vec<TapLeafHash> =
                scripts.iter().map(|s| TapLeafHash::from_script(s, LeafVersion::TapScript)).collect();
            leaves.retain(|l| allowed.contains(l));
            signable += leaves.len();
        }
        // Signatures commit to the whole transaction (SIGHASH_DEFAULT), whatever the PSBT
        // asks: one made for some inputs or outputs only could be reused elsewhere.
        input.sighash_type = None;
        if signable == 0 {
            return Err(refuse(
                "this guardian signs only the policy's recovery leaves (after T_RECOVER) and the deep vault's paths, \
                 and this input asks for neither",
            ));
        }
    }
    let fee = total_in.saturating_sub(psbt.unsigned_tx.output.iter().map(|o| o.value.to_sat()).sum());
    let mut shown =
        format!("RECOVERY: {} coin(s), {} in all, fee {}.\n", psbt.inputs.len(), btc(total_in), btc(fee));
    for o in &psbt.unsigned_tx.output {
        let to = vigil_policy::bitcoin::Address::from_script(&o.script_pubkey, policy.network)
            .map_or_else(|_| o.script_pubkey.to_hex_string(), |a| a.to_string());
        shown += &format!("  pays {} to {to}\n", btc(o.value.to_sat()));
    }
    shown += "Sign only if the owner asked you in person and told you this address is theirs.";
    if !yes {
        confirm(&shown, "SIGN")?;
    }
    let before: usize = psbt.inputs.iter().map(|i| i.tap_script_sigs.len()).sum();
    // No key-path signature either: the internal key and merkle root are set aside meanwhile.
    let kept: Vec<_> =
        psbt.inputs.iter_mut().map(|i| (i.tap_internal_key.take(), i.tap_merkle_root.take())).collect();
    keys.sign_psbt(0, &mut psbt);
    for (input, (key, root)) in psbt.inputs.iter_mut().zip(kept) {
        (input.tap_internal_key, input.tap_merkle_root) = (key, root);
    }
    let added = psbt.inputs.iter().map(|i| i.tap_script_sigs.len()).sum::<usize>() - before;
    if added == 0 {
        bail!("this guardian's key signed nothing in {} (is it the right key?)", file.display());
    }
    std::fs::write(file, base64_encode(&psbt.serialize()))
        .with_context(|| format!("writing {}", file.display()))?;
    if json {
        println!("{}", json!({"signed_inputs": added, "file": file.display().to_string()}));
    } else {
        println!(
            "Signed ({added} signature(s)). Give {} back to the owner, or to the next guardian.",
            file.display()
        );
    }
    Ok(())
}

/// `vigil guardian lift`: signs the lift of the lockdown at hand, at the height another
/// guardian proposed or, as the first, a day past the earliest the governance wait allows.
/// The co-signer's tip is checked against the towers' median.
fn lift(
    co: &CosignerClient,
    policy: &Policy,
    auth: &vigil_policy::bitcoin::secp256k1::Keypair,
    yes: bool,
    json: bool,
) -> anyhow::Result<()> {
    use vigil_client::lift::{voted, LiftVote, NoLift};
    let state: wire::LockdownState = co.get("/v1/lockdown")?;
    let towers = vigil_client::towers::TowerClient::all(policy, auth, co.nonces());
    let towers_tip = vigil_client::towers::towers_tip(&towers, co.client_id());
    let vote = match LiftVote::for_state(&state, towers_tip) {
        Ok(v) => v,
        // The decision stands: nothing more to sign, and nothing failed.
        Err(NoLift::Lifted(_)) if json => {
            println!("{}", serde_json::to_value(&state)?);
            return Ok(());
        }
        Err(e @ NoLift::Lifted(_)) => {
            println!("{e} Nothing more to sign.");
            return Ok(());
        }
        Err(e) => bail!("{e}; nothing was signed"),
    };
    if !yes {
        confirm(&format!("LIFT THE LOCKDOWN. {}", vote.describe(&state)), "LIFT")?;
    }
    let _: wire::LockdownStatus = co.post("/v1/lockdown/lift", &vote.sign(co.client_id(), auth))?;
    // Signed and taken: how many signed so far is told if it can be read.
    match co.get::<wire::LockdownState>("/v1/lockdown") {
        Ok(after) if json => println!("{}", serde_json::to_value(&after)?),
        Ok(after) if after.lifted_at > 0 => println!("{}", voted(&after, vote.at)),
        Ok(after) => println!("{} The others run: vigil guardian lift", voted(&after, vote.at)),
        Err(e) if json => println!("{}", json!({"lift_proposed": vote.at, "error": e.to_string()})),
        Err(e) => println!(
            "Your signature is in, lifting it at block {}; how many signed could not be read: {e}",
            vote.at
        ),
    }
    Ok(())
}

/// Runs a guardian command.
pub fn run(args: GuardianArgs) -> anyhow::Result<()> {
    let pass = || passphrase(args.passphrase_file.as_deref());
    if let GuardianCommand::Init { network: name } = &args.command {
        let keys = MasterKey::create(
            &args.key,
            pass()?.as_bytes(),
            network(name)?,
            vigil_keystore::KdfParams::INTERACTIVE,
        )?;
        let (account, auth) = (keys.account_key(0), keys.auth_key(0));
        if args.json {
            println!("{}", json!({ "key": account, "auth_key": auth.to_string() }));
        } else {
            println!(
                "Your guardian key was created in {} (sealed under your passphrase).",
                args.key.display()
            );
            println!("Give the owner these two lines (they are public):");
            println!("  guardian key: {account}");
            println!("  auth key:     {auth}");
        }
        return Ok(());
    }
    let policy_path = args.policy.as_deref().context("--policy FILE: the client's pinned policy")?;
    let policy_text =
        std::fs::read_to_string(policy_path).with_context(|| format!("reading {}", policy_path.display()))?;
    let policy = Policy::from_toml(&policy_text)?;
    let keys = MasterKey::open(&args.key, pass()?.as_bytes(), policy.network)?;
    let auth = keys.auth_keypair(0);
    let is_guardian =
        |p: &Policy| p.guardians.keys.iter().any(|g| g.auth_key() == auth.x_only_public_key().0);
    if let GuardianCommand::SignRecovery { file, yes } = &args.command {
        // Without the co-signer (gone, usually, when recovery is asked): the versions the kept
        // record leads through, as coins keep the scripts of the version they came under (and
        // the one waiting, which may have applied since the kept tip).
        let kept = checked_record_file(&policy_text, &changes_file(policy_path), None)?.0;
        let policies =
            vigil_client::policies::Policies::from_record(&policy_text, kept.as_ref()).map_err(|e| {
                anyhow::anyhow!("{}: {e}; nothing was signed", changes_file(policy_path).display())
            })?;
        let versions: Vec<_> = policies.applied_or_waiting().into_iter().cloned().collect();
        // A guardian the quorum added later is one too.
        if !versions.iter().any(|c| is_guardian(c.policy())) {
            bail!("this key is not one of the policy's guardians");
        }
        return sign_recovery(&versions, &keys, file, *yes, args.json);
    }
    let nonce_file = args.key.with_extension("nonce");
    if let GuardianCommand::Ui { listen } = &args.command {
        // The page holds the auth key only; approvals open the signing key from the
        // passphrase typed into their confirmation form.
        drop(keys);
        return crate::ui::serve(listen, |gate| {
            let page = vigil_ui::guardian::GuardianPage::new(
                policy_text,
                args.key.clone(),
                changes_file(policy_path),
                *auth,
                nonce_file,
                gate,
            )?;
            if !page.is_guardian(&auth.x_only_public_key().0) {
                bail!("this key is not one of the policy's guardians");
            }
            Ok(std::sync::Arc::new(page).router())
        });
    }
    let co = CosignerClient::new(&policy_text, *auth, nonce_file)?;
    // The policy the guardians' quorum has changed it to since, each step checked from the
    // pinned copy, and kept beside it (never followed back to an older record); the kept one
    // when the co-signer cannot be reached (the command's own request then says so).
    // A chain that does not check blocks approving and signing policies only: a lockdown, a
    // denial or a panic must not wait on a co-signer that serves a bad chain.
    let signs = matches!(args.command, GuardianCommand::Approve { .. } | GuardianCommand::Policy { .. });
    let served = co.get::<wire::PolicyChanges>("/v1/policy/changes").map_err(|e| e.to_string());
    let (record, warning) = checked_record_file(&policy_text, &changes_file(policy_path), Some(served))?;
    match warning {
        Some(w) if signs => bail!("{w}. Nothing was signed"),
        Some(w) => eprintln!("WARNING: {w}"),
        None => {}
    }
    let followed = match record.map(|r| vigil_client::policy_chain::follow(&policy_text, &r.changes, r.tip)) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) if signs => bail!("{}: {e}. Nothing was signed", changes_file(policy_path).display()),
        Some(Err(e)) => {
            eprintln!("WARNING: {}: {e}; using your copy", changes_file(policy_path).display());
            None
        }
        None => None,
    };
    let history = followed.as_ref().map_or_else(|| vec![policy.clone()], |f| f.history.clone());
    // A guardian the quorum added later holds the first version too: any version counts.
    if !history.iter().any(is_guardian) {
        bail!("this key is not one of the policy's guardians");
    }
    let checker = Checker::following(&history)?;
    let current_text = followed.map_or_else(|| policy_text.clone(), |f| f.current_text);
    let current = checker.current();
    let show = |v: &Value, text: String| {
        if args.json {
            println!("{v}");
        } else {
            println!("{text}");
        }
    };
    match args.command {
        GuardianCommand::Init { .. } | GuardianCommand::SignRecovery { .. } | GuardianCommand::Ui { .. } => {
            unreachable!("handled above")
        }
        GuardianCommand::Pending => {
            let all: Vec<SpendStatus> = co.get("/v1/spends")?;
            let waiting: Vec<&SpendStatus> = all.iter().filter(|s| s.state == "waiting").collect();
            let mut text = if waiting.is_empty() {
                "No spend request is waiting for guardians.".to_owned()
            } else {
                waiting.iter().map(|s| describe(s)).collect::<Vec<_>>().join("\n\n")
            };
            // Best effort: the spends are what this command is for.
            let restore: Option<wire::RestoreState> = co.get("/v1/restore").ok();
            if let Some(restore) = restore.filter(|r| r.unconfirmed) {
                text = format!(
                    "The owner's wallet was restored on a new device at block {} and waits for your \
                     confirmation ({} of {} guardians so far): until then every vault spend waits for you. \
                     Speak to the owner, then: vigil guardian confirm-restore\n\n{text}",
                    restore.restored_at_height, restore.confirmations, restore.needed
                );
            }
            show(&serde_json::to_value(&waiting)?, text);
        }
        GuardianCommand::Show { id } => {
            let s: SpendStatus = co.get(&format!("/v1/spends/{id}"))?;
            let text = match checker.check(&s) {
                Ok(checked) => checked.describe(&s),
                Err(e) => format!("{}\n  DO NOT APPROVE: {e}", describe(&s)),
            };
            show(&serde_json::to_value(&s)?, text);
        }
        GuardianCommand::Approve { id, yes } | GuardianCommand::Deny { id, yes } => {
            let approve = matches!(args.command, GuardianCommand::Approve { .. });
            let s: SpendStatus = co.get(&format!("/v1/spends/{id}"))?;
            // What is shown and signed is rebuilt from this guardian's own copy of the policy:
            // the co-signer's description is not trusted. Denying needs no such proof.
            let checked = checker.check(&s);
            let (mut psbt, shown) = match (approve, checked) {
                (_, Ok(ok)) => {
                    let shown = ok.describe(&s);
                    (ok.psbt, shown)
                }
                (true, Err(e)) => return Err(e.into()),
                (false, Err(e)) => {
                    (Psbt::deserialize(&base64_decode(&s.psbt)?)?, format!("{}\n  ({e})", describe(&s)))
                }
            };
            if !yes {
                let word = if approve { "APPROVE" } else { "DENY" };
                confirm(&shown, word)?;
            }
            let vote = if approve {
                keys.sign_psbt(0, &mut psbt);
                wire::Vote {
                    approve: true,
                    approval_signature: Some(wire::sign(&s.approval.digest(), &auth).signature),
                    psbt: Some(base64_encode(&psbt.serialize())),
                }
            } else {
                wire::Vote { approve: false, approval_signature: None, psbt: None }
            };
            let after: SpendStatus = co.post(&format!("/v1/spends/{id}/vote"), &vote)?;
            show(&serde_json::to_value(&after)?, format!("Done.\n{}", describe(&after)));
        }
        GuardianCommand::ConfirmRestore { restore, yes } => {
            let last: wire::RestoreState = co.get("/v1/restore")?;
            if !last.unconfirmed {
                bail!("no restore of the owner's wallet waits for confirmation: nothing was signed");
            }
            if !yes {
                eprintln!(
                    "The owner's wallet was restored on a new device at block {}. Confirm it only if you have \
                     spoken to the owner yourself since, on a number you know, and they are free and safe: \
                     whoever restored it holds their own codes. Ask them which restore number their new device \
                     shows.",
                    last.restored_at_height
                );
            }
            let typed = match restore {
                Some(typed) => typed,
                None if yes => last.restore.to_string(),
                None => {
                    eprint!("Restore number their new device shows: ");
                    std::io::stderr().flush()?;
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line
                }
            };
            let restore =
                vigil_client::guardian::typed_restore(&typed, last.restore).map_err(anyhow::Error::msg)?;
            let r: wire::RestoreConfirmation =
                co.post("/v1/restore/confirm", &wire::ConfirmRestore { restore })?;
            let text = if r.held {
                format!(
                    "Your confirmation is in: {} of {} guardians. Vault spends still wait for the guardians.",
                    r.confirmations, r.needed
                )
            } else {
                format!(
                    "The restore is confirmed ({} of {} guardians): vault spends within the limits are approved \
                     at once again.",
                    r.confirmations, r.needed
                )
            };
            show(&serde_json::to_value(&r)?, text);
        }
        GuardianCommand::Lockdown { blocks, silent } => {
            crate::owner::check_lockdown_blocks(blocks)?;
            let lock = vigil_client::towers::lock_down_as_guardian(&co, current, &auth, blocks, silent);
            let mut text = lock.headline();
            for (name, e) in &lock.towers {
                match e {
                    None => text.push_str(&format!("\nWatchtower {name}: locked down")),
                    Some(e) => text.push_str(&format!("\nWatchtower {name}: NOT reached ({e})")),
                }
            }
            let value = json!({
                "until_height": lock.cosigner.as_ref().ok().map(|l| l.until_height),
                "quiet": lock.quiet,
                "cosigner_error": lock.cosigner.as_ref().err().map(|e| e.to_string()),
                "towers": lock.towers.iter().map(|(n, e)| json!({"name": n, "error": e})).collect::<Vec<_>>(),
            });
            show(&value, text);
            if lock.nobody_took_it() {
                bail!("nobody took the lockdown: run the command again");
            }
        }
        GuardianCommand::Lift { yes } => lift(&co, current, &auth, yes, args.json)?,
        GuardianCommand::Panic { id, not_after, new } => {
            let open = (id.is_none() && !new).then(|| open_panic(&co, current, &auth)).flatten();
            if open.is_some() && not_after.is_some() {
                eprintln!("--not-after is not used: you join a panic that names its own last block.");
            }
            let joined = open.as_ref().map(|o| {
                let who: Vec<String> = o.proposers.iter().map(|g| format!("guardian {g}")).collect();
                format!(
                    "Joined the panic {} started (id {}, acting until block {}); their signature checks. \
                     (--new starts another instead.)\n",
                    who.join(" and "),
                    o.panic.id,
                    o.panic.not_after_height
                )
            });
            let proposers = open.as_ref().map(|o| o.proposers.clone()).unwrap_or_default();
            let panic = match open {
                Some(o) => o.panic,
                None => wire::Panic {
                    policy_id: co.client_id().to_owned(),
                    id: id.unwrap_or_else(|| {
                        use vigil_policy::bitcoin::secp256k1::rand::RngCore;
                        let mut b = [0u8; 32];
                        vigil_policy::bitcoin::secp256k1::rand::thread_rng().fill_bytes(&mut b);
                        b.to_lower_hex_string()
                    }),
                    not_after_height: not_after.context(
                        "no panic of another guardian waits to be joined (or the co-signer's feed or the towers \
                         could not be read): a new one needs --not-after HEIGHT, the last block it may act in (at \
                         most 144 ahead)",
                    )?,
                },
            };
            let (id, not_after) = (panic.id.clone(), panic.not_after_height);
            let signatures = vec![wire::sign(&panic.digest(), &auth)];
            let order = wire::PanicOrder { panic: panic.clone(), signatures };
            let r: wire::PanicRelayed = co.post("/v1/panic", &order)?;
            // Once the quorum signed, every tower is handed the panic directly too: a
            // compromised co-signer must not be able to hold it back, nor claim it went out.
            let direct = if r.towers.is_empty() {
                Some(Vec::new())
            } else {
                let towers = vigil_client::towers::TowerClient::all(current, &auth, co.nonces());
                vigil_client::towers::hand_panic_to_every_tower(&towers, panic, &r.signatures)
            };
            let text = if r.towers.is_empty() {
                format!(
                    "Your signature is in: {} of {} guardians. The others run:\n  vigil guardian panic --id {id} --not-after {not_after}",
                    r.approvals, r.needed
                )
            } else {
                let acted: Vec<String> = r
                    .towers
                    .iter()
                    .map(|t| {
                        format!("{} {}", t.name, if t.acknowledged { "acted" } else { "NOT reached yet" })
                    })
                    .collect();
                format!(
                    "The quorum signed: every vault is being swept to the deep vault. Towers, as the co-signer \
                     reports: {}.{}",
                    acted.join(", "),
                    told_directly(&direct, "the co-signer says the quorum signed but gives no signatures")
                )
            };
            let mut value = serde_json::to_value(&r)?;
            value["towers_told_directly"] = direct_json(&direct);
            value["panic"] = json!({
                "id": id,
                "not_after_height": not_after,
                "joined": joined.is_some(),
                "started_by": proposers,
            });
            show(&value, format!("{}{text}", joined.unwrap_or_default()));
        }
        GuardianCommand::Policy { file, yes } => {
            let new =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let parsed = Policy::from_toml(&new)?;
            if !yes {
                let lines = vigil_client::guardian::diff(&current_text, &new);
                let diff = if lines.is_empty() {
                    "  (no line differs)".to_owned()
                } else {
                    lines.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
                };
                confirm(
                    &format!("Policy version {} -> {}. Changes:\n{diff}", current.version, parsed.version),
                    "SIGN",
                )?;
            }
            let digest = vigil_tower::wire::policy_change_digest(co.client_id(), &new);
            let req =
                wire::PolicyChange { policy: new.clone(), signatures: vec![wire::sign(&digest, &auth)] };
            let r: wire::PolicyChangeStatus = co.post("/v1/policy", &req)?;
            // The record kept beside the policy takes the change at once: recovery may later
            // need its scripts with no co-signer left to ask.
            let served = co.get::<wire::PolicyChanges>("/v1/policy/changes").map_err(|e| e.to_string());
            // Once the quorum signed, every tower is handed the change directly too (each checks
            // the signatures): a compromised co-signer must not keep a tightening from them.
            let direct = match &served {
                _ if r.effective_height == 0 => Some(Vec::new()),
                Ok(served) => {
                    let towers = vigil_client::towers::TowerClient::all(current, &auth, co.nonces());
                    vigil_client::towers::hand_change_to_every_tower(&towers, co.client_id(), &new, served)
                }
                Err(_) => None,
            };
            if let Some(w) = checked_record_file(&policy_text, &changes_file(policy_path), Some(served))?.1 {
                eprintln!("WARNING: {w}");
            }
            let text = if r.effective_height == 0 {
                format!("Signed: {} of {} guardians so far.", r.approvals, r.needed)
            } else {
                format!(
                    "The quorum signed version {}: it applies at block {}.{}",
                    r.version,
                    r.effective_height,
                    told_directly(
                        &direct,
                        "the co-signer does not serve the change it says the quorum signed"
                    )
                )
            };
            let mut value = serde_json::to_value(&r)?;
            value["towers_told_directly"] = direct_json(&direct);
            show(&value, text);
        }
    }
    Ok(())
}

/// The panic another guardian started that this one joins, if one waits for signatures (see
/// [`vigil_client::guardian::open_panic`]); none when the co-signer's feed or the towers'
/// height cannot be read (a new panic is started then).
fn open_panic(
    co: &CosignerClient,
    current: &Policy,
    auth: &vigil_policy::bitcoin::secp256k1::Keypair,
) -> Option<vigil_client::guardian::OpenPanic> {
    let alarms = co.get("/v1/alarms").ok()?;
    let towers = vigil_client::towers::TowerClient::all(current, auth, co.nonces());
    let tip = vigil_client::towers::towers_tip(&towers, co.client_id())?;
    vigil_client::guardian::open_panic(alarms, current, co.client_id(), &auth.x_only_public_key().0, tip)
}

/// What the towers said when handed a decision directly, one line each; a warning naming
/// `missing` when the co-signer gave nothing to hand them.
fn told_directly(direct: &Option<vigil_client::towers::TowerAnswers>, missing: &str) -> String {
    match direct {
        Some(reports) => reports
            .iter()
            .map(|(name, why)| match why {
                None => format!("\nWatchtower {name}, told directly: took it"),
                Some(e) => format!("\nWatchtower {name}, told directly: NOT taken ({e})"),
            })
            .collect(),
        None => format!("\nWARNING: {missing}: the towers were not told directly. Call the provider."),
    }
}

fn direct_json(direct: &Option<vigil_client::towers::TowerAnswers>) -> serde_json::Value {
    let reports = direct.as_deref().unwrap_or_default();
    reports.iter().map(|(name, why)| json!({"name": name, "error": why})).collect()
}

/// Where a guardian keeps the record of changes to the policy at `policy` it last checked.
fn changes_file(policy: &Path) -> PathBuf {
    policy.with_extension("changes.json")
}

fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.decode(s)?)
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
