//! The machinery behind the one declaration of every setting: the `settings!` macro, which writes
//! the `Settings` struct, its `Default`, the flags struct `Args` and the table of [`Setting`]s, and
//! the table's entries, each owning its key, flag, kind and slot.

use serde_norway::Value as Yaml;

use super::Issues;
use super::kind::Kind;
use super::settings::{Args, Settings};

/// A flag (its env var is `INFERPICK_` and the flag in capitals).
pub(crate) struct Flag {
    /// The `Args` field, which is also clap's id: `max_report_age`.
    pub(crate) id: &'static str,
    /// `--max-report-age`.
    pub(crate) long: String,
    /// `INFERPICK_MAX_REPORT_AGE`.
    pub(crate) env: String,
    /// The placeholder in `--help`: `DURATION`.
    pub(crate) value_name: &'static str,
    /// The flag's text in `Args`, when given.
    pub(crate) get: fn(&Args) -> Option<&str>,
}

impl Flag {
    pub(crate) fn new(
        id: &'static str,
        value_name: &'static str,
        get: fn(&Args) -> Option<&str>,
    ) -> Flag {
        Flag {
            id,
            long: format!("--{}", id.replace('_', "-")),
            env: format!("INFERPICK_{}", id.to_uppercase()),
            value_name,
            get,
        }
    }
}

/// One setting as the flags, the file walk and the reference see it.
pub(crate) trait Setting: Send + Sync {
    /// Its path in the file: `staleness.max_report_age`.
    fn key(&self) -> &'static str;
    /// Its flag, if it has one (some are only in the file).
    fn flag(&self) -> Option<&Flag>;
    /// What it means: the doc comment, on one line.
    fn doc(&self) -> String;
    /// What it accepts, in words.
    fn accepts(&self) -> String;
    /// Its default as it would be written, or empty when there is none.
    fn default_text(&self) -> String;
    /// Parses a flag's text into `s`.
    fn apply_text(&self, s: &mut Settings, text: &str) -> Result<(), String>;
    /// Reads a value of the file into `s`; problems go to `is` at the setting's path or below.
    fn apply_yaml(&self, s: &mut Settings, v: &Yaml, is: &mut Issues);
}

/// A [`Setting`] of kind `K`, whose value lives where `get` and `set` say.
pub(crate) struct Typed<K: Kind> {
    pub(crate) key: &'static str,
    /// The raw doc comment (the member's, else the field's).
    pub(crate) doc: &'static str,
    pub(crate) kind: K,
    pub(crate) flag: Option<Flag>,
    /// The value in a `Settings`, or `None` where it has none (a TLS file without TLS).
    pub(crate) get: fn(&Settings) -> Option<&K::Value>,
    pub(crate) set: fn(&mut Settings, K::Value),
}

impl<K: Kind> Setting for Typed<K> {
    fn key(&self) -> &'static str {
        self.key
    }

    fn flag(&self) -> Option<&Flag> {
        self.flag.as_ref()
    }

    fn doc(&self) -> String {
        one_line(self.doc)
    }

    fn accepts(&self) -> String {
        self.kind.accepts()
    }

    fn default_text(&self) -> String {
        let defaults = Settings::default();
        (self.get)(&defaults).map_or_else(String::new, |v| self.kind.show(v))
    }

    fn apply_text(&self, s: &mut Settings, text: &str) -> Result<(), String> {
        let v = self.kind.parse(text)?;
        (self.set)(s, v);
        Ok(())
    }

    fn apply_yaml(&self, s: &mut Settings, v: &Yaml, is: &mut Issues) {
        if let Some(v) = self.kind.read(v, self.key, is) {
            (self.set)(s, v);
        }
    }
}

/// Doc comment lines (each with its leading space) as one line.
fn one_line(doc: &str) -> String {
    doc.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Declares the settings. Each field of `Settings` is written once:
///
/// ```text
/// /// Doc comment: the field's rustdoc, and its help text when it is a single setting.
/// field: Type = default_expression, {
///     "yaml.key" => kind, flag args_field "VALUE_NAME";
/// }
/// ```
///
/// A field made of several settings (a struct such as the cost model) lists one line per member,
/// `"cost.power_of_k" .power_of_k => kind;`, each with its own doc comment. `flag` is optional
/// (file-only settings); `via get, set` replaces the plain field access where the slot is not a
/// plain field (a TLS file inside an `Option`).
macro_rules! settings {
    (@flag) => { None };
    (@flag $flag:ident $value_name:literal) => {
        Some($crate::config::declare::Flag::new(
            stringify!($flag),
            $value_name,
            |a: &Args| a.$flag.as_deref(),
        ))
    };
    (@get [] $field:ident $(. $sub:ident)*) => { |s: &Settings| Some(&s.$field $(. $sub)*) };
    (@get [$get:expr] $($path:tt)*) => { $get };
    (@set [] $field:ident $(. $sub:ident)*) => { |s: &mut Settings, v| s.$field $(. $sub)* = v };
    (@set [$set:expr] $($path:tt)*) => { $set };
    (
        $(
            $(#[doc = $doc:literal])*
            $field:ident: $ty:ty = $default:expr, {
                $(
                    $(#[doc = $mdoc:literal])*
                    $key:literal $(. $sub:ident)* => $kind:expr
                        $(, flag $flag:ident $value_name:literal)?
                        $(, via $get:expr, $set:expr)?
                    ;
                )+
            }
        )+
    ) => {
        /// The resolved configuration: flags over the file over the defaults.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )+
            /// The config file, if any (watched for changes).
            pub config_file: Option<std::path::PathBuf>,
            /// The flags, kept so a reload re-applies them over the new file.
            pub args: Args,
        }

        impl Default for Settings {
            fn default() -> Self {
                Self {
                    $($field: $default,)+
                    config_file: None,
                    args: Args::default(),
                }
            }
        }

        /// Command-line flags of `inferpick-picker` (CONTRACTS.md), each also read from its env
        /// var `INFERPICK_<FLAG>`. Each holds the flag's text, unparsed, so that a bad value is
        /// reported with every other problem; unset flags fall back to the file, then to the
        /// defaults (`--help` shows them).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Args {
            /// YAML config file; flags override it. Re-read on SIGHUP and when it changes.
            pub config: Option<std::path::PathBuf>,
            $($($(
                /// The flag's text, if given (`--help` says what it sets).
                pub $flag: Option<String>,
            )?)+)+
        }

        impl Args {
            /// Copies the flags present in `m` into `self`.
            pub(super) fn take(&mut self, m: &clap::ArgMatches) {
                if let Some(p) = m.get_one::<std::path::PathBuf>("config") {
                    self.config = Some(p.clone());
                }
                $($($(
                    if let Some(v) = m.get_one::<String>(stringify!($flag)) {
                        self.$flag = Some(v.clone());
                    }
                )?)+)+
            }
        }

        /// Every setting, in declaration order.
        pub(super) fn declared() -> Vec<Box<dyn $crate::config::declare::Setting>> {
            let mut table: Vec<Box<dyn $crate::config::declare::Setting>> = Vec::new();
            $(
                let field_doc: &'static str = concat!($($doc, "\n",)*);
                $(
                    let doc: &'static str = concat!($($mdoc, "\n",)*);
                    table.push(Box::new($crate::config::declare::Typed {
                        key: $key,
                        doc: if doc.is_empty() { field_doc } else { doc },
                        kind: $kind,
                        flag: settings!(@flag $($flag $value_name)?),
                        get: settings!(@get [$($get)?] $field $(. $sub)*),
                        set: settings!(@set [$($set)?] $field $(. $sub)*),
                    }));
                )+
            )+
            table
        }
    };
}

pub(crate) use settings;

/// Every setting, in declaration order.
pub(crate) fn table() -> &'static [Box<dyn Setting>] {
    static TABLE: std::sync::LazyLock<Vec<Box<dyn Setting>>> =
        std::sync::LazyLock::new(super::settings::declared);
    &TABLE
}
