//! A GPU's health as NVML reports it ([`GpuHealth`], an optional part of each report's `gpus[]`
//! entry), and the one reading of it that agents, pickers and dashboards share: which conditions
//! stop routing to an endpoint ([`GpuHealth::fatal`]) and how much a throttled GPU has slowed
//! ([`GpuHealth::speed`]).
//!
//! Agents older than these fields send none of them and pickers older than them ignore them
//! (pickers ignore report fields they do not know), so the schema version stays 1.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most XID codes, throttle reasons each `gpus[]` entry may list.
pub const MAX_HEALTH_ITEMS: usize = 16;

/// XID errors after which the GPU cannot be trusted until it is reset, with what each means.
/// From NVIDIA's XID catalogue: the codes whose documented action is a GPU reset or node reboot.
/// Application faults (13, 31, 43, …) are not here: they end one process's work, not the GPU's.
pub const FATAL_XIDS: [(u32, &str); 10] = [
    (48, "double-bit ECC error"),
    (61, "internal micro-controller breakpoint"),
    (62, "internal micro-controller halt"),
    (64, "ECC page retirement or row remapping failure"),
    (74, "NVLink error"),
    (79, "GPU has fallen off the bus"),
    (94, "contained ECC error"),
    (95, "uncontained ECC error"),
    (119, "GSP RPC timeout"),
    (120, "GSP error"),
];

/// Why NVML says the GPU's clocks are held below what the load asks for. Only reasons that slow
/// a busy GPU are reported (idle, application-clock and display reasons are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThrottleReason {
    /// The driver slowed the GPU to stay under its temperature target.
    SwThermal,
    /// The hardware slowed the GPU because it is too hot.
    HwThermal,
    /// The hardware slowed the GPU (an external signal, power brake or temperature).
    HwSlowdown,
    /// The board's power brake (an external power supply signal).
    HwPowerBrake,
    /// The GPU is at its power cap.
    SwPowerCap,
    /// A reason this reader does not know (a newer agent or driver).
    #[serde(other)]
    Other,
}

impl ThrottleReason {
    /// The name in reports, metric labels and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleReason::SwThermal => "sw-thermal",
            ThrottleReason::HwThermal => "hw-thermal",
            ThrottleReason::HwSlowdown => "hw-slowdown",
            ThrottleReason::HwPowerBrake => "hw-power-brake",
            ThrottleReason::SwPowerCap => "sw-power-cap",
            ThrottleReason::Other => "other",
        }
    }
}

impl fmt::Display for ThrottleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One GPU's health. Every field is optional: absent means NVML (or this agent) does not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuHealth {
    /// NVML answered "GPU lost" for this GPU: it fell off the bus or needs a reset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
    /// Active reasons that hold the clocks down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle: Vec<ThrottleReason>,
    /// Current SM clock, MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<u32>,
    /// The SM clock's maximum, MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_max_mhz: Option<u32>,
    /// Distinct XID error codes seen since the agent started, in the order first seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xid_errors: Vec<u32>,
    /// Uncorrectable ECC errors since the driver last loaded (NVML's volatile count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_uncorrectable_errors: Option<u64>,
    /// Memory pages retired for errors and waiting for a reset to take effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_pages_pending: Option<bool>,
    /// Memory rows waiting to be remapped at the next reset (A100 and newer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remapped_rows_pending: Option<bool>,
    /// A row remapping failed: the GPU's memory has errors it cannot repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remapped_rows_failed: Option<bool>,
    /// PCIe link generation now in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_link_generation: Option<u32>,
    /// Highest PCIe link generation the GPU and its slot support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_link_generation_max: Option<u32>,
    /// PCIe lanes now in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_link_width: Option<u32>,
    /// Most PCIe lanes the GPU and its slot support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_link_width_max: Option<u32>,
}

/// Below this fraction of its maximum SM clock a throttled GPU counts as this slow, whatever the
/// clock says (a clock read at a bad moment must not make an endpoint look nearly dead).
pub const MIN_THROTTLED_SPEED: f64 = 0.1;

impl GpuHealth {
    /// Why no request should go to this GPU's endpoint, or `None` when nothing fatal is reported:
    /// the GPU is lost, has uncorrectable ECC errors, failed a row remapping, or reported an XID
    /// from [`FATAL_XIDS`].
    pub fn fatal(&self) -> Option<String> {
        if self.lost {
            return Some("GPU lost (NVML cannot reach it)".into());
        }
        if let Some(n) = self.ecc_uncorrectable_errors.filter(|&n| n > 0) {
            return Some(format!("{n} uncorrectable ECC errors"));
        }
        if self.remapped_rows_failed == Some(true) {
            return Some("row remapping failed".into());
        }
        self.xid_errors.iter().find_map(|code| {
            FATAL_XIDS
                .iter()
                .find(|(c, _)| c == code)
                .map(|(c, what)| format!("XID {c} ({what})"))
        })
    }

    /// The fraction of its full speed the GPU runs at: its SM clock over the maximum while a
    /// throttle reason is active, at least [`MIN_THROTTLED_SPEED`]; 1 when not throttled or when
    /// the clocks are not reported.
    pub fn speed(&self) -> f64 {
        match (
            self.throttle.is_empty(),
            self.sm_clock_mhz,
            self.sm_clock_max_mhz,
        ) {
            (false, Some(now), Some(max)) if max > 0 => {
                (f64::from(now) / f64::from(max)).clamp(MIN_THROTTLED_SPEED, 1.0)
            }
            _ => 1.0,
        }
    }

    /// Conditions that do not change routing but want an operator: pending page retirement or
    /// row remapping (they take effect at the next reset) and a PCIe link below its maximum width.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.retired_pages_pending == Some(true) {
            out.push("retired pages pending a reset".to_string());
        }
        if self.remapped_rows_pending == Some(true) {
            out.push("row remapping pending a reset".to_string());
        }
        if let (Some(w), Some(max)) = (self.pcie_link_width, self.pcie_link_width_max)
            && w < max
        {
            out.push(format!("PCIe link x{w} of x{max}"));
        }
        out
    }

    pub(crate) fn validate(&self, at: &str) -> Result<(), crate::ValidationError> {
        for (name, len) in [
            ("throttle", self.throttle.len()),
            ("xid_errors", self.xid_errors.len()),
        ] {
            if len > MAX_HEALTH_ITEMS {
                return Err(crate::ValidationError {
                    field: format!("{at}.{name}"),
                    problem: format!("{len} entries: at most {MAX_HEALTH_ITEMS} allowed"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fatal_condition_names_itself() {
        assert_eq!(GpuHealth::default().fatal(), None);
        let lost = GpuHealth {
            lost: true,
            ..Default::default()
        };
        assert!(lost.fatal().unwrap().contains("GPU lost"));
        let ecc = GpuHealth {
            ecc_uncorrectable_errors: Some(2),
            ..Default::default()
        };
        assert_eq!(ecc.fatal().unwrap(), "2 uncorrectable ECC errors");
        let none_yet = GpuHealth {
            ecc_uncorrectable_errors: Some(0),
            remapped_rows_failed: Some(false),
            xid_errors: vec![13, 31, 43],
            ..Default::default()
        };
        assert_eq!(none_yet.fatal(), None, "application XIDs are not fatal");
        let remap = GpuHealth {
            remapped_rows_failed: Some(true),
            ..Default::default()
        };
        assert_eq!(remap.fatal().unwrap(), "row remapping failed");
        let xid = GpuHealth {
            xid_errors: vec![13, 79],
            ..Default::default()
        };
        assert_eq!(xid.fatal().unwrap(), "XID 79 (GPU has fallen off the bus)");
    }

    #[test]
    fn speed_is_the_clock_ratio_only_while_throttled() {
        let clocks = |throttle: Vec<ThrottleReason>, now, max| GpuHealth {
            throttle,
            sm_clock_mhz: now,
            sm_clock_max_mhz: max,
            ..Default::default()
        };
        assert_eq!(clocks(vec![], Some(900), Some(1980)).speed(), 1.0);
        let thermal = clocks(vec![ThrottleReason::HwThermal], Some(990), Some(1980));
        assert_eq!(thermal.speed(), 0.5);
        assert_eq!(
            clocks(vec![ThrottleReason::SwPowerCap], Some(10), Some(1980)).speed(),
            MIN_THROTTLED_SPEED
        );
        assert_eq!(
            clocks(vec![ThrottleReason::SwPowerCap], None, Some(1980)).speed(),
            1.0
        );
        assert_eq!(
            clocks(vec![ThrottleReason::SwPowerCap], Some(5), Some(0)).speed(),
            1.0
        );
    }

    #[test]
    fn unknown_throttle_reasons_decode_as_other() {
        let h: GpuHealth =
            serde_json::from_str(r#"{"throttle": ["hw-thermal", "from-the-future"]}"#).unwrap();
        assert_eq!(
            h.throttle,
            vec![ThrottleReason::HwThermal, ThrottleReason::Other]
        );
    }

    #[test]
    fn warnings_name_pending_repairs_and_narrow_links() {
        let h = GpuHealth {
            remapped_rows_pending: Some(true),
            pcie_link_width: Some(8),
            pcie_link_width_max: Some(16),
            pcie_link_generation: Some(1),
            pcie_link_generation_max: Some(5),
            ..Default::default()
        };
        assert_eq!(
            h.warnings(),
            vec!["row remapping pending a reset", "PCIe link x8 of x16"]
        );
        assert_eq!(h.fatal(), None);
    }
}
