//! From one GPU's answers to a report's `gpus[]` entry, away from NVML so that every condition is
//! tested with a fake device: [`DeviceReader`] is what a GPU answers, [`sample`] maps one device,
//! and [`Tracker`] adds what one read cannot know (XIDs seen earlier, GPUs that stopped answering).

use std::collections::HashMap;

use inferpick_schema::health::MAX_HEALTH_ITEMS;
use inferpick_schema::{Gpu, GpuHealth, Limits, ThrottleReason};
use nvml_wrapper::bitmasks::device::ThrottleReasons;

/// Why a query has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The GPU fell off the bus or needs a reset (NVML's `GpuLost`).
    Lost,
    /// The GPU or driver does not answer this query (not supported, no permission, …): the field
    /// is left out of the report.
    Unavailable,
}

/// One query's answer.
pub type Answer<T> = Result<T, ReadError>;

/// What one GPU answers, one query per method, as NVML does.
pub trait DeviceReader {
    /// NVML UUID (`GPU-…`, `MIG-…`).
    fn uuid(&self) -> Answer<String>;
    /// NVML index on the node.
    fn index(&self) -> Answer<u32>;
    /// Product name.
    fn name(&self) -> Answer<String>;
    /// Memory used and total, bytes.
    fn memory(&self) -> Answer<(u64, u64)>;
    /// Busy time over NVML's sample period, percent.
    fn utilization_percent(&self) -> Answer<u32>;
    /// Core temperature, °C.
    fn temperature_celsius(&self) -> Answer<u32>;
    /// Power draw, milliwatts.
    fn power_milliwatts(&self) -> Answer<u32>;
    /// NVML's current clock throttle (clock event) reasons, as its bitmask.
    fn throttle_reasons(&self) -> Answer<u64>;
    /// SM clock now, MHz.
    fn sm_clock_mhz(&self) -> Answer<u32>;
    /// SM clock maximum, MHz.
    fn sm_clock_max_mhz(&self) -> Answer<u32>;
    /// Uncorrectable ECC errors since the driver loaded (volatile count).
    fn ecc_uncorrectable_errors(&self) -> Answer<u64>;
    /// Retired pages wait for a reset.
    fn retired_pages_pending(&self) -> Answer<bool>;
    /// Rows wait to be remapped at the next reset.
    fn remapped_rows_pending(&self) -> Answer<bool>;
    /// A row remapping failed.
    fn remapped_rows_failed(&self) -> Answer<bool>;
    /// PCIe link generation now.
    fn pcie_link_generation(&self) -> Answer<u32>;
    /// Highest PCIe link generation of the GPU and its slot.
    fn pcie_link_generation_max(&self) -> Answer<u32>;
    /// PCIe lanes now.
    fn pcie_link_width(&self) -> Answer<u32>;
    /// Most PCIe lanes of the GPU and its slot.
    fn pcie_link_width_max(&self) -> Answer<u32>;
}

/// The NVML reasons that slow a busy GPU, as the report names them. Idle, application or
/// user-defined clocks, display and sync-boost reasons are left out: they say nothing about a
/// loaded GPU running slower than it should.
const SLOWING: [(ThrottleReasons, ThrottleReason); 5] = [
    (
        ThrottleReasons::SW_THERMAL_SLOWDOWN,
        ThrottleReason::SwThermal,
    ),
    (
        ThrottleReasons::HW_THERMAL_SLOWDOWN,
        ThrottleReason::HwThermal,
    ),
    (ThrottleReasons::HW_SLOWDOWN, ThrottleReason::HwSlowdown),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        ThrottleReason::HwPowerBrake,
    ),
    (ThrottleReasons::SW_POWER_CAP, ThrottleReason::SwPowerCap),
];

/// The slowing reasons set in NVML's bitmask `bits`.
pub fn throttle_reasons(bits: u64) -> Vec<ThrottleReason> {
    SLOWING
        .iter()
        .filter(|(flag, _)| bits & flag.bits() != 0)
        .map(|&(_, reason)| reason)
        .collect()
}

/// One device's read.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// Every query answered or was unavailable; `health.xid_errors` is still empty.
    Read(Box<Gpu>),
    /// A query answered "GPU lost"; the UUID when it was still readable.
    Lost(Option<String>),
    /// The device cannot name itself: it is left out, or reported lost if it was seen before.
    Unreadable,
}

/// Reads every field of `device`. A query that answers [`ReadError::Lost`] makes the whole GPU
/// lost; an unavailable one leaves its field `None`.
pub fn sample(device: &dyn DeviceReader) -> Sample {
    let uuid = match device.uuid() {
        Ok(uuid) => uuid,
        Err(ReadError::Lost) => return Sample::Lost(None),
        Err(ReadError::Unavailable) => return Sample::Unreadable,
    };
    match read_all(device, uuid.clone()) {
        Ok(gpu) => Sample::Read(Box::new(gpu)),
        Err(Lost) => Sample::Lost(Some(uuid)),
    }
}

/// A query answered "GPU lost".
struct Lost;

/// `Ok(None)` for an unavailable answer, `Err` for a lost GPU.
fn opt<T>(answer: Answer<T>) -> Result<Option<T>, Lost> {
    match answer {
        Ok(v) => Ok(Some(v)),
        Err(ReadError::Unavailable) => Ok(None),
        Err(ReadError::Lost) => Err(Lost),
    }
}

fn read_all(d: &dyn DeviceReader, uuid: String) -> Result<Gpu, Lost> {
    let memory = opt(d.memory())?;
    let health = GpuHealth {
        lost: false,
        throttle: opt(d.throttle_reasons())?.map_or_else(Vec::new, throttle_reasons),
        sm_clock_mhz: opt(d.sm_clock_mhz())?,
        sm_clock_max_mhz: opt(d.sm_clock_max_mhz())?,
        xid_errors: Vec::new(),
        ecc_uncorrectable_errors: opt(d.ecc_uncorrectable_errors())?,
        retired_pages_pending: opt(d.retired_pages_pending())?,
        remapped_rows_pending: opt(d.remapped_rows_pending())?,
        remapped_rows_failed: opt(d.remapped_rows_failed())?,
        pcie_link_generation: opt(d.pcie_link_generation())?,
        pcie_link_generation_max: opt(d.pcie_link_generation_max())?,
        pcie_link_width: opt(d.pcie_link_width())?,
        pcie_link_width_max: opt(d.pcie_link_width_max())?,
    };
    Ok(Gpu {
        uuid,
        index: opt(d.index())?,
        name: opt(d.name())?,
        memory_used_bytes: memory.map(|(used, _)| used),
        memory_total_bytes: memory.map(|(_, total)| total),
        utilization_percent: opt(d.utilization_percent())?.map(f64::from),
        temperature_celsius: opt(d.temperature_celsius())?.map(f64::from),
        power_watts: opt(d.power_milliwatts())?.map(|mw| f64::from(mw) / 1000.0),
        health: Some(health),
    })
}

/// What stays between reads: the GPUs reported so far (to report one lost rather than drop it
/// when it stops answering) and the XID codes each has raised.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Identity (uuid, index, name) of every GPU reported, in the order first reported.
    seen: Vec<Gpu>,
    xids: HashMap<String, Vec<u32>>,
}

impl Tracker {
    /// Records XID `code` raised by the GPU `uuid`: distinct codes in the order first seen, at
    /// most [`MAX_HEALTH_ITEMS`] per GPU (later new codes are dropped: the first ones say more).
    pub fn record_xid(&mut self, uuid: &str, code: u32) {
        let codes = self.xids.entry(uuid.to_string()).or_default();
        if !codes.contains(&code) && codes.len() < MAX_HEALTH_ITEMS {
            codes.push(code);
        }
    }

    /// The report's GPUs from one read's samples: those read, with their XIDs; those that
    /// answered "GPU lost" or were reported before and no longer answer, as lost GPUs with the
    /// identity last reported. At most [`Limits::MAX_GPUS`].
    pub fn finish(&mut self, samples: Vec<Sample>) -> Vec<Gpu> {
        let mut out: Vec<Gpu> = Vec::new();
        let mut lost: Vec<String> = Vec::new();
        for s in samples {
            match s {
                Sample::Read(gpu) => {
                    self.remember(&gpu);
                    out.push(*gpu);
                }
                Sample::Lost(Some(uuid)) => lost.push(uuid),
                Sample::Lost(None) | Sample::Unreadable => {}
            }
        }
        for gpu in &self.seen {
            if !out.iter().any(|g| g.uuid == gpu.uuid) && !lost.contains(&gpu.uuid) {
                lost.push(gpu.uuid.clone());
            }
        }
        for uuid in lost {
            out.push(self.lost_gpu(uuid));
        }
        for gpu in &mut out {
            if let (Some(codes), Some(health)) = (self.xids.get(&gpu.uuid), gpu.health.as_mut()) {
                health.xid_errors = codes.clone();
            }
        }
        out.truncate(Limits::MAX_GPUS);
        out
    }

    fn remember(&mut self, gpu: &Gpu) {
        let identity = identity(gpu.uuid.clone(), gpu.index, gpu.name.clone());
        if let Some(known) = self.seen.iter_mut().find(|g| g.uuid == gpu.uuid) {
            *known = identity;
        } else if self.seen.len() < Limits::MAX_GPUS {
            self.seen.push(identity);
        }
    }

    /// `uuid` as a lost GPU: its last reported index and name, nothing measured.
    fn lost_gpu(&self, uuid: String) -> Gpu {
        let known = self.seen.iter().find(|g| g.uuid == uuid);
        Gpu {
            health: Some(GpuHealth {
                lost: true,
                ..GpuHealth::default()
            }),
            ..identity(
                uuid,
                known.and_then(|g| g.index),
                known.and_then(|g| g.name.clone()),
            )
        }
    }
}

/// A GPU entry that names the GPU and measures nothing.
fn identity(uuid: String, index: Option<u32>, name: Option<String>) -> Gpu {
    Gpu {
        uuid,
        index,
        name,
        memory_used_bytes: None,
        memory_total_bytes: None,
        utilization_percent: None,
        temperature_celsius: None,
        power_watts: None,
        health: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPU whose answers the test sets; a healthy H100 by default.
    #[derive(Clone)]
    struct FakeDevice {
        uuid: Answer<String>,
        throttle: Answer<u64>,
        sm_clock: Answer<u32>,
        sm_clock_max: Answer<u32>,
        ecc: Answer<u64>,
        pages_pending: Answer<bool>,
        rows_pending: Answer<bool>,
        rows_failed: Answer<bool>,
        pcie: [Answer<u32>; 4],
        /// Every other query.
        rest: Answer<()>,
    }

    impl FakeDevice {
        fn healthy(uuid: &str) -> Self {
            FakeDevice {
                uuid: Ok(uuid.to_string()),
                throttle: Ok(0),
                sm_clock: Ok(1980),
                sm_clock_max: Ok(1980),
                ecc: Ok(0),
                pages_pending: Ok(false),
                rows_pending: Ok(false),
                rows_failed: Ok(false),
                pcie: [Ok(5), Ok(5), Ok(16), Ok(16)],
                rest: Ok(()),
            }
        }
    }

    impl DeviceReader for FakeDevice {
        fn uuid(&self) -> Answer<String> {
            self.uuid.clone()
        }
        fn index(&self) -> Answer<u32> {
            self.rest.map(|()| 3)
        }
        fn name(&self) -> Answer<String> {
            self.rest.map(|()| "NVIDIA H100 80GB HBM3".into())
        }
        fn memory(&self) -> Answer<(u64, u64)> {
            self.rest.map(|()| (10, 80))
        }
        fn utilization_percent(&self) -> Answer<u32> {
            self.rest.map(|()| 90)
        }
        fn temperature_celsius(&self) -> Answer<u32> {
            self.rest.map(|()| 60)
        }
        fn power_milliwatts(&self) -> Answer<u32> {
            self.rest.map(|()| 455_500)
        }
        fn throttle_reasons(&self) -> Answer<u64> {
            self.throttle
        }
        fn sm_clock_mhz(&self) -> Answer<u32> {
            self.sm_clock
        }
        fn sm_clock_max_mhz(&self) -> Answer<u32> {
            self.sm_clock_max
        }
        fn ecc_uncorrectable_errors(&self) -> Answer<u64> {
            self.ecc
        }
        fn retired_pages_pending(&self) -> Answer<bool> {
            self.pages_pending
        }
        fn remapped_rows_pending(&self) -> Answer<bool> {
            self.rows_pending
        }
        fn remapped_rows_failed(&self) -> Answer<bool> {
            self.rows_failed
        }
        fn pcie_link_generation(&self) -> Answer<u32> {
            self.pcie[0]
        }
        fn pcie_link_generation_max(&self) -> Answer<u32> {
            self.pcie[1]
        }
        fn pcie_link_width(&self) -> Answer<u32> {
            self.pcie[2]
        }
        fn pcie_link_width_max(&self) -> Answer<u32> {
            self.pcie[3]
        }
    }

    fn health_of(device: &FakeDevice) -> GpuHealth {
        match sample(device) {
            Sample::Read(gpu) => gpu.health.expect("NVML reads carry health"),
            other => panic!("not read: {other:?}"),
        }
    }

    #[test]
    fn a_healthy_gpu_reads_every_field_and_nothing_fatal() {
        let Sample::Read(gpu) = sample(&FakeDevice::healthy("GPU-a")) else {
            panic!("not read")
        };
        assert_eq!(gpu.uuid, "GPU-a");
        assert_eq!(gpu.index, Some(3));
        assert_eq!(
            (gpu.memory_used_bytes, gpu.memory_total_bytes),
            (Some(10), Some(80))
        );
        assert_eq!(gpu.power_watts, Some(455.5));
        let h = gpu.health.unwrap();
        assert_eq!(
            h,
            GpuHealth {
                sm_clock_mhz: Some(1980),
                sm_clock_max_mhz: Some(1980),
                ecc_uncorrectable_errors: Some(0),
                retired_pages_pending: Some(false),
                remapped_rows_pending: Some(false),
                remapped_rows_failed: Some(false),
                pcie_link_generation: Some(5),
                pcie_link_generation_max: Some(5),
                pcie_link_width: Some(16),
                pcie_link_width_max: Some(16),
                ..GpuHealth::default()
            }
        );
        assert_eq!(h.fatal(), None);
        assert!(h.warnings().is_empty());
    }

    #[test]
    fn each_slowing_throttle_bit_maps_to_its_reason() {
        for (flag, reason) in SLOWING {
            let device = FakeDevice {
                throttle: Ok(flag.bits()),
                sm_clock: Ok(990),
                ..FakeDevice::healthy("GPU-a")
            };
            let h = health_of(&device);
            assert_eq!(h.throttle, vec![reason], "{flag:?}");
            assert_eq!(h.speed(), 0.5, "{flag:?}");
        }
        let all = SLOWING.iter().fold(0, |bits, (flag, _)| bits | flag.bits());
        assert_eq!(throttle_reasons(all).len(), SLOWING.len());
    }

    #[test]
    fn reasons_that_do_not_slow_a_busy_gpu_are_ignored() {
        for flag in [
            ThrottleReasons::GPU_IDLE,
            ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            ThrottleReasons::DISPLAY_CLOCK_SETTING,
            ThrottleReasons::SYNC_BOOST,
        ] {
            assert_eq!(throttle_reasons(flag.bits()), vec![], "{flag:?}");
        }
        let mixed = ThrottleReasons::GPU_IDLE | ThrottleReasons::HW_THERMAL_SLOWDOWN;
        assert_eq!(
            throttle_reasons(mixed.bits()),
            vec![ThrottleReason::HwThermal]
        );
    }

    #[test]
    fn ecc_and_failed_remapping_are_fatal_pending_repairs_warn() {
        let ecc = health_of(&FakeDevice {
            ecc: Ok(2),
            ..FakeDevice::healthy("GPU-a")
        });
        assert_eq!(ecc.ecc_uncorrectable_errors, Some(2));
        assert_eq!(ecc.fatal().unwrap(), "2 uncorrectable ECC errors");
        let failed = health_of(&FakeDevice {
            rows_failed: Ok(true),
            ..FakeDevice::healthy("GPU-a")
        });
        assert_eq!(failed.remapped_rows_failed, Some(true));
        assert_eq!(failed.fatal().unwrap(), "row remapping failed");
        let pending = health_of(&FakeDevice {
            pages_pending: Ok(true),
            rows_pending: Ok(true),
            ..FakeDevice::healthy("GPU-a")
        });
        assert_eq!(pending.retired_pages_pending, Some(true));
        assert_eq!(pending.remapped_rows_pending, Some(true));
        assert_eq!(pending.fatal(), None);
        assert_eq!(pending.warnings().len(), 2, "{:?}", pending.warnings());
    }

    #[test]
    fn a_narrow_pcie_link_reads_as_such() {
        let h = health_of(&FakeDevice {
            pcie: [Ok(3), Ok(5), Ok(8), Ok(16)],
            ..FakeDevice::healthy("GPU-a")
        });
        assert_eq!(
            (h.pcie_link_generation, h.pcie_link_generation_max),
            (Some(3), Some(5))
        );
        assert_eq!(
            (h.pcie_link_width, h.pcie_link_width_max),
            (Some(8), Some(16))
        );
        assert_eq!(h.warnings(), vec!["PCIe link x8 of x16"]);
    }

    #[test]
    fn unsupported_queries_leave_their_fields_out() {
        fn na<T>() -> Answer<T> {
            Err(ReadError::Unavailable)
        }
        let device = FakeDevice {
            uuid: Ok("GPU-a".into()),
            throttle: na(),
            sm_clock: na(),
            sm_clock_max: na(),
            ecc: na(),
            pages_pending: na(),
            rows_pending: na(),
            rows_failed: na(),
            pcie: [na(), na(), na(), na()],
            rest: na(),
        };
        let Sample::Read(gpu) = sample(&device) else {
            panic!("an unsupported query made the GPU unreadable")
        };
        assert_eq!(gpu.health, Some(GpuHealth::default()));
        assert_eq!((gpu.index, gpu.name, gpu.power_watts), (None, None, None));
        let nameless = FakeDevice {
            uuid: na(),
            ..FakeDevice::healthy("GPU-a")
        };
        assert_eq!(sample(&nameless), Sample::Unreadable);
    }

    #[test]
    fn xids_accumulate_distinct_in_order_up_to_the_cap() {
        let mut tracker = Tracker::default();
        for code in [13, 79, 13, 43] {
            tracker.record_xid("GPU-a", code);
        }
        tracker.record_xid("GPU-b", 31);
        let read = |t: &mut Tracker| {
            t.finish(vec![
                sample(&FakeDevice::healthy("GPU-a")),
                sample(&FakeDevice::healthy("GPU-b")),
            ])
        };
        let gpus = read(&mut tracker);
        let xids = |g: &Gpu| g.health.as_ref().unwrap().xid_errors.clone();
        assert_eq!(xids(&gpus[0]), vec![13, 79, 43]);
        assert_eq!(xids(&gpus[1]), vec![31]);
        assert!(
            gpus[0]
                .health
                .as_ref()
                .unwrap()
                .fatal()
                .unwrap()
                .contains("XID 79")
        );
        // Kept across reads, and capped.
        for code in 100..200 {
            tracker.record_xid("GPU-a", code);
        }
        let again = xids(&read(&mut tracker)[0]);
        assert_eq!(again.len(), MAX_HEALTH_ITEMS);
        assert_eq!(again[..4], [13, 79, 43, 100]);
    }

    #[test]
    fn a_gpu_that_answers_lost_keeps_its_identity() {
        let mut tracker = Tracker::default();
        let first = tracker.finish(vec![sample(&FakeDevice::healthy("GPU-a"))]);
        assert!(!first[0].health.as_ref().unwrap().lost);
        tracker.record_xid("GPU-a", 79);
        // A query after the UUID says lost.
        let lost_later = FakeDevice {
            ecc: Err(ReadError::Lost),
            ..FakeDevice::healthy("GPU-a")
        };
        // Or the UUID itself does, or the device cannot be opened at all.
        let lost_at_once = FakeDevice {
            uuid: Err(ReadError::Lost),
            ..FakeDevice::healthy("GPU-a")
        };
        for samples in [
            vec![sample(&lost_later)],
            vec![sample(&lost_at_once)],
            vec![],
        ] {
            let gpus = tracker.finish(samples);
            assert_eq!(gpus.len(), 1, "{gpus:?}");
            let g = &gpus[0];
            assert_eq!(
                (g.uuid.as_str(), g.index, g.name.as_deref()),
                ("GPU-a", Some(3), Some("NVIDIA H100 80GB HBM3"))
            );
            let h = g.health.as_ref().unwrap();
            assert!(h.lost);
            assert_eq!(h.xid_errors, vec![79]);
            assert_eq!(g.memory_used_bytes, None, "a lost GPU measures nothing");
            assert!(h.fatal().unwrap().contains("GPU lost"));
        }
        // Back after a reset.
        let back = tracker.finish(vec![sample(&FakeDevice::healthy("GPU-a"))]);
        assert!(!back[0].health.as_ref().unwrap().lost);
    }

    #[test]
    fn a_gpu_never_reported_is_not_invented() {
        let mut tracker = Tracker::default();
        let lost_unknown = FakeDevice {
            uuid: Err(ReadError::Lost),
            ..FakeDevice::healthy("GPU-a")
        };
        assert_eq!(tracker.finish(vec![sample(&lost_unknown)]), vec![]);
    }
}
