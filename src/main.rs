//! Parses the command line and dispatches; the work lives in the library.

use etcd_backup_restore::flags::hiargs::{
    CopyConfig, GcOnceConfig, ListConfig, ReconcileConfig, RestoreConfig, ServerConfig, SnapshotConfig, VerifyConfig,
};
use etcd_backup_restore::flags::{self, Command, Parsed};
use etcd_backup_restore::{commands, exit, logging, signals};

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
        Ok(Parsed::Run(command, low)) => {
            logging::init(low.log_level.unwrap_or(log::LevelFilter::Info));
            signals::install();
            for note in &low.notes {
                log::info!("{note}");
            }
            let code = match command {
                Command::Snapshot => SnapshotConfig::new(*low, &env).map(|c| commands::snapshot::run(&c)),
                Command::Server => ServerConfig::new(*low, &env).map(|c| commands::server::run(&c)),
                Command::Restore => RestoreConfig::new(*low, &env).map(|c| commands::restore::run(&c)),
                Command::List => ListConfig::new(*low, &env).map(|c| commands::list::run(&c)),
                Command::Gc => GcOnceConfig::new(*low, &env).map(|c| commands::gc::run(&c)),
                Command::Reconcile => ReconcileConfig::new(*low, &env).map(|c| commands::reconcile::run(&c)),
                Command::Verify => VerifyConfig::new(*low, &env).map(|c| commands::verify::run(&c)),
                Command::Copy => CopyConfig::new(*low, &env).map(|c| commands::copy::run(&c)),
            };
            code.unwrap_or_else(|e| usage(&e.0))
        }
        Err(e) => usage(&e.0),
    };
    std::process::exit(code);
}

fn usage(msg: &str) -> i32 {
    // The message may quote a flag's value or a file's name: one line, shown as data.
    eprintln!("etcd-backup-restore: {}", logging::escape_controls(msg));
    exit::USAGE
}
