//! The owner's unlock: the real code against the duress code (their distributions and a
//! Mann–Whitney test), each against the baseline of opening a one-code key file stretched
//! with the same parameters; and what stretching costs at a few candidate strengths (ADR 0004).

use std::time::{Duration, Instant};

use vigil_client::owner;
use vigil_keystore::KdfParams;
use vigil_policy::bitcoin::Network;
use vigil_testenv::stats::{distribution, mann_whitney_z, quantile, Z_P001};

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

pub fn unlock() {
    println!("\n== owner unlock (argon2id {:?})", owner::KDF);
    let dir = tempfile::tempdir().unwrap();
    owner::create(dir.path(), &owner::new_phrase(), b"real", b"duress", Network::Regtest, owner::KDF)
        .unwrap();
    let one_code = vigil_keystore::seal(&[7u8; 147], b"real", owner::KDF).unwrap();
    let (mut real, mut duress, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    let rounds = 50;
    for i in 0..rounds {
        // Alternate the order so both see the same machine conditions.
        let mut pair = [(&mut real, &b"real"[..]), (&mut duress, &b"duress"[..])];
        if i % 2 == 1 {
            pair.reverse();
        }
        for (samples, code) in pair {
            samples.push(time(|| {
                owner::unlock(dir.path(), code, Network::Regtest).unwrap();
            }));
        }
        baseline.push(time(|| {
            vigil_keystore::open(&one_code, b"real").unwrap();
        }));
    }
    let z = mann_whitney_z(&real, &duress);
    let p50 = |v: &[Duration]| quantile(v, 0.5).as_secs_f64();
    println!("real code   ({rounds}): {}", distribution(&real));
    println!("duress code ({rounds}): {}", distribution(&duress));
    println!("baseline, a one-code key file ({rounds}): {}", distribution(&baseline));
    println!(
        "real/baseline {:.2}x, duress/baseline {:.2}x, duress/real {:.3}x",
        p50(&real) / p50(&baseline),
        p50(&duress) / p50(&baseline),
        p50(&duress) / p50(&real)
    );
    println!(
        "Mann-Whitney z = {z:.2}: {} (|z| < {Z_P001} is p > 0.001); goal: unlock under 1 s: {}",
        if z.abs() < Z_P001 { "not told apart" } else { "TOLD APART" },
        if quantile(&real, 0.99) < Duration::from_secs(1) { "met" } else { "NOT MET" }
    );
    println!("stretching alone, per candidate (p50 of 5, ratio to {:?}):", owner::KDF);
    let cost = |kdf: KdfParams| {
        let file = vigil_keystore::seal(b"x", b"code", kdf).unwrap();
        let mut v: Vec<Duration> =
            (0..5).map(|_| time(|| drop(vigil_keystore::open(&file, b"code")))).collect();
        v.sort();
        v[2]
    };
    let chosen = cost(owner::KDF);
    for kdf in [
        KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, lanes: 1 },
        KdfParams { m_cost_kib: 128 * 1024, t_cost: 3, lanes: 1 },
        KdfParams { m_cost_kib: 256 * 1024, t_cost: 3, lanes: 1 },
        KdfParams { m_cost_kib: 512 * 1024, t_cost: 2, lanes: 1 },
        KdfParams { m_cost_kib: 1024 * 1024, t_cost: 1, lanes: 1 },
    ] {
        let c = cost(kdf);
        println!(
            "  {:>5} MiB x {} passes: {:.0} ms ({:.2}x)",
            kdf.m_cost_kib / 1024,
            kdf.t_cost,
            c.as_secs_f64() * 1e3,
            c.as_secs_f64() / chosen.as_secs_f64()
        );
    }
}
