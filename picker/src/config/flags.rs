//! The command line: one clap argument per setting that has a flag, built from the settings table
//! (name, env var, value name, help with the default), and the flags' layer over the file.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::Issues;
use super::declare::table;
use super::settings::{Args, Settings};

const ABOUT: &str = "inferpick's picker: ingests load reports from agents and decides which endpoint serves each LLM request";

/// `inferpick-picker`'s command: `--config`, then every setting's flag in declaration order.
fn command() -> Command {
    let config = Arg::new("config")
        .long("config")
        .env("INFERPICK_CONFIG")
        .value_name("PATH")
        .value_parser(clap::value_parser!(PathBuf))
        .action(ArgAction::Set)
        .help("YAML config file; flags override it. Re-read on SIGHUP and when it changes.");
    let flags = table().iter().filter_map(|setting| {
        let flag = setting.flag()?;
        let default = setting.default_text();
        let help = if default.is_empty() {
            setting.doc()
        } else {
            format!("{} [default: {default}]", setting.doc())
        };
        Some(
            Arg::new(flag.id)
                .long(&flag.long[2..])
                .env(flag.env.as_str())
                .value_name(flag.value_name)
                .action(ArgAction::Set)
                // So that `--extproc-fallbacks -2` is reported with its range, not as a flag.
                .allow_negative_numbers(true)
                .help(help),
        )
    });
    Command::new("inferpick-picker")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .arg(config)
        .args(flags)
}

impl clap::CommandFactory for Args {
    fn command() -> Command {
        command()
    }

    fn command_for_update() -> Command {
        command()
    }
}

impl clap::FromArgMatches for Args {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Args::default();
        args.take(m);
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.take(m);
        Ok(())
    }
}

impl clap::Parser for Args {}

/// Applies the flags given in `args` over `s`, reporting each bad one as `--flag`; returns the
/// keys they gave.
pub(super) fn apply(s: &mut Settings, args: &Args, is: &mut Issues) -> Vec<&'static str> {
    let mut given = Vec::new();
    for setting in table() {
        let Some(flag) = setting.flag() else { continue };
        let Some(text) = (flag.get)(args) else {
            continue;
        };
        given.push(setting.key());
        if let Err(e) = setting.apply_text(s, text) {
            is.push(flag.long.as_str(), e);
        }
    }
    given
}

/// The flag that sets `key`, as written on the command line (`--tls-key`).
pub(super) fn flag_of(key: &str) -> String {
    table()
        .iter()
        .find(|t| t.key() == key)
        .and_then(|t| t.flag())
        .map_or_else(|| key.to_string(), |f| f.long.clone())
}
