//! One household as its members run Vigil: the owner's wallet through `vigil` commands with
//! the codes and phrases typed on standard input, and guardians through `vigil guardian`,
//! each with a key of their own made fresh for the drill.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use vigil_policy::bitcoin::{Address, Amount, OutPoint};

use crate::world::{step, World};
use crate::DrillError;

/// The owner's unlock code.
pub const REAL: &str = "2468";
/// The owner's duress code.
pub const DURESS: &str = "1357";
/// Guardians in every household, and how many must approve.
pub const GUARDIANS: usize = 3;
/// The guardians' quorum.
pub const THRESHOLD: usize = 2;
/// DELAY: blocks a vault spend waits on chain (short, so the drill's "days" are blocks).
pub const DELAY: u32 = 18;
/// T_RECOVER.
pub const T_RECOVER: u32 = 36;
/// LONG.
pub const LONG: u32 = 72;
/// The allowance's ceiling, sats.
pub const ALLOWANCE_LIMIT: u64 = 2_000_000;
/// The velocity budget per window, sats (vaults above it are guarded).
pub const VELOCITY: u64 = 10_000_000;

/// A command's run: whether it succeeded, its output, its messages.
#[derive(Debug)]
pub struct Run {
    /// Exit status 0.
    pub ok: bool,
    /// Standard output.
    pub out: String,
    /// Standard error.
    pub err: String,
}

/// A household: the owner's wallet directory and phrases, the guardians' key files.
pub struct Household {
    /// Its directory (the wallet is `wallet/`, the guardians' keys `guardian-N.key`).
    pub dir: PathBuf,
    /// The owner's recovery phrase (typed to sign vault operations).
    pub phrase: String,
    /// The off-site backup key's phrase.
    pub backup: String,
    exe: PathBuf,
    guardians: Vec<PathBuf>,
}

/// The numbered words `vigil init` showed between two steps (`STEP 1`: the recovery
/// phrase, `STEP 2`: the backup key's).
pub fn words_between(text: &str, from: &str, to: &str) -> String {
    let part = text.split(from).nth(1).and_then(|t| t.split(to).next()).unwrap_or_default();
    part.lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .flat_map(|l| {
            l.split_whitespace().filter(|w| !w.ends_with('.')).map(str::to_owned).collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Household {
    /// Makes the guardians' keys and the owner's wallet (`vigil init`), enrolled with the
    /// co-signer and every running tower.
    pub fn set_up(world: &World, name: &str) -> Result<Household, DrillError> {
        let dir = world.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut household = Household {
            dir: dir.clone(),
            phrase: String::new(),
            backup: String::new(),
            exe: world.exe.clone(),
            guardians: (1..=GUARDIANS).map(|g| dir.join(format!("guardian-{g}.key"))).collect(),
        };
        let mut keys = Vec::new();
        for g in 0..GUARDIANS {
            crate::world::write_secret(
                &household.guardians[g].with_extension("pass"),
                "a guardian's passphrase\n",
            )?;
            let made = household.guardian_json(g, &["init", "--network", "regtest"], false)?;
            keys.push(made["key"].as_str().unwrap_or_default().to_owned());
        }
        let mut args: Vec<String> =
            ["init", "--no-phrase-check", "--network", "regtest", "--chain-url", &world.rpc_url]
                .map(str::to_owned)
                .to_vec();
        args.extend(["--chain-cookie".into(), world.rpc_cookie.display().to_string()]);
        args.extend([
            "--cosigner".into(),
            world.cosigner.url.clone(),
            "--cosigner-token".into(),
            world.cosigner.token()?,
        ]);
        for (flag, value) in [
            ("--delay", DELAY.to_string()),
            ("--recovery", T_RECOVER.to_string()),
            ("--deep-vault", LONG.to_string()),
            ("--guardians-needed", THRESHOLD.to_string()),
            ("--hot-limit", ALLOWANCE_LIMIT.to_string()),
            ("--velocity-limit", VELOCITY.to_string()),
        ] {
            args.extend([flag.to_owned(), value]);
        }
        for (i, t) in world.towers.iter().enumerate() {
            args.push("--tower".into());
            args.push(format!("tower-{},{},{},{}", i + 1, t.service.url, t.public_key, t.service.token()?));
        }
        for k in keys {
            args.extend(["--guardian".into(), k]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = household.owner(&args, &[REAL, REAL, DURESS, DURESS])?;
        if !run.ok {
            return Err(DrillError::Step { what: "vigil init".into(), why: run.err });
        }
        household.phrase = words_between(&run.err, "STEP 1", "STEP 2");
        household.backup = words_between(&run.err, "STEP 2", "STEP 3");
        Ok(household)
    }

    /// The wallet's directory.
    pub fn wallet(&self) -> PathBuf {
        self.dir.join("wallet")
    }

    /// The pinned policy (the guardians' copy).
    pub fn policy(&self) -> PathBuf {
        self.wallet().join("policy.toml")
    }

    /// Runs `vigil ARGS --wallet DIR`, typing `input` one line each.
    pub fn owner(&self, args: &[&str], input: &[&str]) -> Result<Run, DrillError> {
        let mut child = Command::new(&self.exe)
            .args(args)
            .arg("--wallet")
            .arg(self.wallet())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        for line in input {
            // A command that stops asking early closes its end: not an error here.
            let _ = writeln!(stdin, "{line}");
        }
        drop(stdin);
        let out = child.wait_with_output()?;
        Ok(Run {
            ok: out.status.success(),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `vigil ARGS --json`, which must succeed; its JSON.
    pub fn owner_json(&self, args: &[&str], input: &[&str]) -> Result<Value, DrillError> {
        let run = self.owner(&[args, &["--json"]].concat(), input)?;
        if !run.ok {
            return Err(DrillError::Step { what: format!("vigil {}", args.join(" ")), why: run.err });
        }
        serde_json::from_str(&run.out).map_err(step("reading vigil's JSON"))
    }

    /// `vigil guardian ARGS` as guardian `g` (0-based); with `policy`, for this household.
    pub fn guardian(&self, g: usize, args: &[&str], policy: bool) -> Result<Run, DrillError> {
        let key: &Path = &self.guardians[g];
        let mut cmd = Command::new(&self.exe);
        cmd.arg("guardian").args(args).arg("--key").arg(key);
        cmd.arg("--passphrase-file").arg(key.with_extension("pass")).arg("--json").env("RUST_LOG", "warn");
        if policy {
            cmd.arg("--policy").arg(self.policy());
        }
        let out = cmd.output()?;
        Ok(Run {
            ok: out.status.success(),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `vigil guardian ARGS`, which must succeed; its JSON (`null` when it printed none).
    pub fn guardian_json(&self, g: usize, args: &[&str], policy: bool) -> Result<Value, DrillError> {
        let run = self.guardian(g, args, policy)?;
        if !run.ok {
            return Err(DrillError::Step {
                what: format!("vigil guardian {}", args.join(" ")),
                why: run.err,
            });
        }
        Ok(serde_json::from_str(&run.out).unwrap_or(Value::Null))
    }

    /// A fresh intake address.
    pub fn receive(&self, allowance: bool) -> Result<Address, DrillError> {
        let args: &[&str] = if allowance { &["receive", "--allowance"] } else { &["receive"] };
        let v = self.owner_json(args, &[REAL])?;
        let text = v["address"].as_str().unwrap_or_default();
        Ok(text.parse::<Address<_>>().map_err(step("reading an address"))?.assume_checked())
    }

    /// Funds the household: `allowance` sats in the allowance, and one vault per amount (each
    /// from an intake coin of its own, a little above it for the fee), all confirmed.
    pub fn fund(&self, world: &mut World, allowance: u64, vaults: &[u64]) -> Result<(), DrillError> {
        let intake = self.receive(false)?;
        for sats in vaults {
            world.payer.pay(&world.rpc, intake.script_pubkey(), Amount::from_sat(sats + 50_000))?;
        }
        if allowance > 0 {
            let hot = self.receive(true)?;
            world.payer.pay(&world.rpc, hot.script_pubkey(), Amount::from_sat(allowance))?;
        }
        world.mine(1)?;
        for sats in vaults {
            let amount = Amount::from_sat(*sats).to_btc().to_string();
            let made = self.owner_json(&["vault", &amount], &[REAL, &self.phrase])?;
            if made["state"] != "protected" {
                return Err(DrillError::Step { what: "vigil vault".into(), why: made.to_string() });
            }
            // The funding's change is the next vault's coin once confirmed.
            world.mine(1)?;
        }
        Ok(())
    }

    /// `vigil status --json` under the real code.
    pub fn status(&self) -> Result<Value, DrillError> {
        self.owner_json(&["status"], &[REAL])
    }

    /// The wallet's vaults as `state.json` records them (outpoint, kind, signed unvault).
    pub fn vaults(&self) -> Result<Vec<Value>, DrillError> {
        let state: Value = serde_json::from_slice(&std::fs::read(self.wallet().join("state.json"))?)
            .map_err(step("reading the wallet's state"))?;
        Ok(state["vaults"].as_array().cloned().unwrap_or_default())
    }

    /// The co-signer's id for this household (its policy's sha256).
    pub fn client_id(&self) -> Result<String, DrillError> {
        use vigil_policy::bitcoin::hashes::{sha256, Hash};
        Ok(sha256::Hash::hash(&std::fs::read(self.policy())?).to_string())
    }
}

/// Everything a `vigil status --json` says the household holds, sats: intake, allowance,
/// vaults, cancelled coins, deep vault.
pub fn holdings(status: &Value) -> u64 {
    ["intake_sat", "allowance_sat", "vault_sat", "cancelled_sat", "deep_vault_sat"]
        .iter()
        .filter_map(|f| status[f].as_u64())
        .sum()
}

/// A vault's outpoint as `state.json` records it.
pub fn outpoint(vault: &Value) -> Result<OutPoint, DrillError> {
    vault["outpoint"].as_str().unwrap_or_default().parse().map_err(step("reading a vault's outpoint"))
}

/// Milliseconds from `from` to `to`.
pub fn millis(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}
