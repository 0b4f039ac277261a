//! Parses the command line and dispatches; the work lives in the library.

use etcd_backup_restore::flags::{self, Command, Parsed, hiargs::SnapshotConfig};
use etcd_backup_restore::{backup, exit, logging};

fn main() {
    let env = |k: &str| std::env::var(k).ok();
    let code = match flags::parse(std::env::args_os().skip(1), &env) {
        Ok(Parsed::Help(text)) => {
            print!("{text}");
            exit::OK
        }
        Ok(Parsed::Version) => {
            println!("etcd-backup-restore {}", env!("CARGO_PKG_VERSION"));
            exit::OK
        }
        Ok(Parsed::Run(Command::Snapshot, low)) => {
            logging::init(low.log_level.unwrap_or(log::LevelFilter::Info));
            match SnapshotConfig::new(*low, &env) {
                Ok(cfg) => backup::run(&cfg),
                Err(e) => usage(&e.0),
            }
        }
        Err(e) => usage(&e.0),
    };
    std::process::exit(code);
}

fn usage(msg: &str) -> i32 {
    eprintln!("etcd-backup-restore: {msg}");
    exit::USAGE
}
