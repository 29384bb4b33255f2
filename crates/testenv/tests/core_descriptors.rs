//! Vigil's descriptors, imported unchanged into a real Bitcoin Core (built from the source the
//! kernel crate vendors): Core accepts their checksums and derives the same addresses.
//!
//! Needs `BITCOIND_EXE` (with `bitcoin-cli` beside it); `scripts/test.sh` builds and sets it.
//! Without it the test says it was skipped, unless `VIGIL_REQUIRE_BITCOIND=1` makes it fail.

use std::path::PathBuf;
use std::process::{Child, Command};

use vigil_policy::bitcoin::{Address, Amount, Network};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::VaultKind;
use vigil_testenv::Env;

struct Bitcoind {
    child: Child,
    cli: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Bitcoind {
    fn start() -> Option<Bitcoind> {
        let Some(exe) = std::env::var_os("BITCOIND_EXE").map(PathBuf::from) else {
            assert!(std::env::var("VIGIL_REQUIRE_BITCOIND").is_err(), "BITCOIND_EXE is not set");
            eprintln!("SKIPPED: BITCOIND_EXE is not set (scripts/test.sh builds bitcoind and sets it)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let args = vec![
            "-regtest".to_string(),
            format!("-datadir={}", dir.path().display()),
            format!("-rpcport={port}"),
            "-rpcuser=vigil".into(),
            "-rpcpassword=vigil".into(),
        ];
        let child = Command::new(&exe)
            .args(&args)
            .args([
                "-listen=0",
                "-server",
                "-printtoconsole=0",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
            ])
            .spawn()
            .unwrap();
        let cli = exe.with_file_name("bitcoin-cli");
        let node = Bitcoind { child, cli, args, _dir: dir };
        node.call(&["-rpcwait", "-rpcwaittimeout=60", "getblockcount"]).expect("bitcoind answers");
        Some(node)
    }

    fn call(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.cli).args(&self.args).args(args).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn addresses(&self, descriptor: &str, range: Option<u32>) -> Vec<String> {
        let mut args = vec!["deriveaddresses", descriptor];
        let r = range.map(|r| format!("[{r},{r}]"));
        if let Some(r) = &r {
            args.push(r);
        }
        let out = self.call(&args).unwrap_or_else(|e| panic!("Core refused {descriptor}: {e}"));
        out.split('"').filter(|s| s.starts_with("bcrt1")).map(str::to_owned).collect()
    }
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        let _ = self.call(&["stop"]);
        let _ = self.child.wait();
    }
}

#[test]
fn bitcoin_core_accepts_every_descriptor_and_derives_the_same_addresses() {
    let Some(node) = Bitcoind::start() else { return };
    let mut env =
        Env::new(ExamplePolicy { delay: 10, recovery: 30, deep_vault: 40, ..ExamplePolicy::default() })
            .unwrap();
    let ranged = env.compiled.ranged_descriptors().unwrap();
    for d in [&ranged.intake, &ranged.recovery, &ranged.deep_vault] {
        let info = node.call(&["getdescriptorinfo", d]).unwrap_or_else(|e| panic!("Core refused {d}: {e}"));
        assert!(info.contains("\"isrange\": true"), "{info}");
        let ours = d.split('#').nth(1).unwrap();
        assert!(info.contains(&format!("\"checksum\": \"{ours}\"")), "{info}");
    }
    for i in [0, 5] {
        let ours = env.compiled.intake_address(i).unwrap().to_string();
        assert_eq!(node.addresses(&ranged.intake, Some(i)), vec![ours]);
    }

    // A real vault: every output's definite descriptor gives Core the address on chain.
    let vault = env.create_vault(Amount::from_sat(2_000_000), VaultKind::Guarded).unwrap();
    let address = |spk: &vigil_policy::bitcoin::ScriptBuf| {
        Address::from_script(spk, Network::Regtest).unwrap().to_string()
    };
    let d = &vault.descriptors;
    let g = vault.graph.graph();
    let checks = [
        (d.vault.to_string(), address(&g.vault_txout.script_pubkey)),
        (d.unvault.to_string(), address(&vault.unvault_txout().script_pubkey)),
        (d.recovery.to_string(), address(&g.cancels[0].tx.output[0].script_pubkey)),
        (d.deep_vault.to_string(), address(&g.emergencies[0].tx.output[0].script_pubkey)),
    ];
    for (descriptor, expected) in checks {
        assert_eq!(node.addresses(&descriptor, None), vec![expected], "{descriptor}");
    }
    // The ranged recovery descriptor at this vault's index is the same output.
    assert_eq!(
        node.addresses(&ranged.recovery, Some(vault.plan.index)),
        vec![address(&g.cancels[0].tx.output[0].script_pubkey)]
    );
}
