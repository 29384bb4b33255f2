//! `vigil drill`: plays the coercion drill against real processes started from this binary,
//! prints the timelines and the summary (or JSON), and writes the HTML report.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

/// The drill's options.
#[derive(Args)]
pub struct DrillArgs {
    /// Play only this scenario (S1…S10; repeat for more).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Where `drill-report.html` is written.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Print the numbers as JSON, one object per scenario.
    #[arg(long)]
    json: bool,
    /// Keep the drill's data directory (chain, stores, wallets, logs) afterwards.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: DrillArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let dir = std::env::temp_dir().join(format!("vigil-drill-{stamp}-{}", std::process::id()));
    let options =
        vigil_drill::Options { exe: std::env::current_exe()?, dir: dir.clone(), only: args.scenarios };
    let played = vigil_drill::run(&options, &mut |line| eprintln!("{line}"));
    let held = played.as_ref().is_ok_and(|r| r.iter().all(|s| s.held));
    if args.keep || !held {
        eprintln!("the drill's processes' data and logs are kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let reports = played?;
    std::fs::create_dir_all(&args.out)?;
    let page = args.out.join("drill-report.html");
    std::fs::write(&page, vigil_drill::report::html(&reports))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&vigil_drill::report::json(&reports))?);
    } else {
        print!("{}\n{}", vigil_drill::report::timelines(&reports), vigil_drill::report::table(&reports));
    }
    eprintln!("report: {} ({:.0} s in all)", page.display(), started.elapsed().as_secs_f64());
    let failed: Vec<&str> = reports.iter().filter(|r| !r.held).map(|r| r.scenario.as_str()).collect();
    if !failed.is_empty() {
        anyhow::bail!("did not hold: {}", failed.join(", "));
    }
    Ok(())
}
