//! GPU readings through NVML (`libnvidia-ml.so.1`, loaded at run time: the agent builds and runs
//! without it). NVML answers each query through [`DeviceReader`]; the mapping to a report's GPU
//! entry and what stays between reads are in [`super::reading`].

use std::sync::{Mutex, OnceLock};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
};
use nvml_wrapper::{Device, EventSet, Nvml};

use super::reading::{Answer, DeviceReader, ReadError, Sample, Tracker, sample};
use super::{GpuId, GpuSource};
use inferpick_schema::Gpu;

/// NVML, initialised once per process: XID event sets borrow it for as long as the agent runs.
static NVML: OnceLock<Nvml> = OnceLock::new();

fn nvml() -> Result<&'static Nvml, NvmlError> {
    if let Some(nvml) = NVML.get() {
        return Ok(nvml);
    }
    let fresh = Nvml::init()?;
    Ok(NVML.get_or_init(|| fresh))
}

/// Most XID events taken from one GPU's event set per read: a GPU that raises them without end
/// must not hold the read up (the codes are distinct and capped anyway).
const MAX_EVENTS_PER_READ: usize = 64;

/// NVML and the devices this pod owns.
pub struct NvmlSource {
    nvml: &'static Nvml,
    /// `None`: every device NVML sees.
    selection: Option<Vec<GpuId>>,
    /// One XID event set per GPU that supports them, with the GPU's UUID (an event set is freed
    /// whole when a registration fails, so GPUs do not share one).
    xid_events: Mutex<Vec<(String, EventSet<'static>)>>,
    tracker: Mutex<Tracker>,
}

impl NvmlSource {
    /// Loads NVML and subscribes to each GPU's critical XID events. Fails with
    /// `LibloadingError` without the library, `DriverNotLoaded` without a driver, and names a
    /// selected GPU that NVML does not know.
    pub fn open(selection: Option<Vec<GpuId>>) -> Result<Self, NvmlError> {
        let nvml = nvml()?;
        if let Some(ids) = &selection {
            for id in ids {
                device(nvml, id)?;
            }
        }
        let source = NvmlSource {
            nvml,
            selection,
            xid_events: Mutex::new(Vec::new()),
            tracker: Mutex::new(Tracker::default()),
        };
        let events = source
            .devices()
            .iter()
            .filter_map(|d| subscribe_xids(nvml, d))
            .collect();
        *source.xid_events.lock().expect("xid lock") = events;
        Ok(source)
    }

    fn devices(&self) -> Vec<Device<'static>> {
        match &self.selection {
            Some(ids) => ids
                .iter()
                .filter_map(|id| device(self.nvml, id).ok())
                .collect(),
            None => {
                let count = self.nvml.device_count().unwrap_or(0);
                (0..count)
                    .filter_map(|i| self.nvml.device_by_index(i).ok())
                    .collect()
            }
        }
    }

    /// Takes every pending XID event, without waiting, into the tracker.
    fn drain_xids(&self, tracker: &mut Tracker) {
        let events = self.xid_events.lock().expect("xid lock");
        for (uuid, set) in events.iter() {
            for _ in 0..MAX_EVENTS_PER_READ {
                let Ok(event) = set.wait(0) else { break };
                if let Some(XidError::Value(code)) = event.event_data {
                    tracing::warn!(gpu = uuid, xid = code, "XID error");
                    tracker.record_xid(uuid, u32::try_from(code).unwrap_or(u32::MAX));
                }
            }
        }
    }
}

fn device(nvml: &'static Nvml, id: &GpuId) -> Result<Device<'static>, NvmlError> {
    match id {
        GpuId::Index(i) => nvml.device_by_index(*i),
        GpuId::Uuid(u) => nvml.device_by_uuid(u.as_str()),
    }
}

/// An event set that receives `device`'s critical XID errors, or `None` where the GPU does not
/// raise them (MIG instances, some drivers): its XIDs are then not reported.
fn subscribe_xids(
    nvml: &'static Nvml,
    device: &Device<'static>,
) -> Option<(String, EventSet<'static>)> {
    let uuid = device.uuid().ok()?;
    let subscribed = nvml
        .create_event_set()
        .map_err(|e| e.to_string())
        .and_then(|set| {
            device
                .register_events(EventTypes::CRITICAL_XID_ERROR, set)
                .map_err(|e| e.error.to_string())
        });
    match subscribed {
        Ok(set) => Some((uuid, set)),
        Err(e) => {
            tracing::info!(gpu = uuid, "XID events not available: {e}");
            None
        }
    }
}

impl GpuSource for NvmlSource {
    fn read(&self) -> Vec<Gpu> {
        let samples: Vec<Sample> = self
            .devices()
            .iter()
            .map(|d| sample(&NvmlDevice(d)))
            .collect();
        let mut tracker = self.tracker.lock().expect("tracker lock");
        self.drain_xids(&mut tracker);
        tracker.finish(samples)
    }
}

/// One NVML device as a [`DeviceReader`].
struct NvmlDevice<'a>(&'a Device<'static>);

/// "GPU lost" stays lost; every other failure (not supported, no permission, …) is a missing value.
fn answer<T>(result: Result<T, NvmlError>) -> Answer<T> {
    result.map_err(|e| match e {
        NvmlError::GpuLost => ReadError::Lost,
        _ => ReadError::Unavailable,
    })
}

impl NvmlDevice<'_> {
    /// One NVML field value as a flag (the remapped-rows fields have no call of their own).
    fn field_flag(&self, id: u32) -> Answer<bool> {
        let mut values = answer(self.0.field_values_for(&[FieldId(id)]))?;
        let value = answer(values.pop().ok_or(NvmlError::NotSupported).and_then(|v| v))?;
        match answer(value.value)? {
            SampleValue::U32(v) => Ok(v != 0),
            SampleValue::U64(v) => Ok(v != 0),
            SampleValue::I64(v) => Ok(v != 0),
            SampleValue::F64(v) => Ok(v != 0.0),
        }
    }
}

impl DeviceReader for NvmlDevice<'_> {
    fn uuid(&self) -> Answer<String> {
        answer(self.0.uuid())
    }
    fn index(&self) -> Answer<u32> {
        answer(self.0.index())
    }
    fn name(&self) -> Answer<String> {
        answer(self.0.name())
    }
    fn memory(&self) -> Answer<(u64, u64)> {
        answer(self.0.memory_info()).map(|m| (m.used, m.total))
    }
    fn utilization_percent(&self) -> Answer<u32> {
        answer(self.0.utilization_rates()).map(|u| u.gpu)
    }
    fn temperature_celsius(&self) -> Answer<u32> {
        answer(self.0.temperature(TemperatureSensor::Gpu))
    }
    fn power_milliwatts(&self) -> Answer<u32> {
        answer(self.0.power_usage())
    }
    fn throttle_reasons(&self) -> Answer<u64> {
        answer(self.0.current_throttle_reasons()).map(|r| r.bits())
    }
    fn sm_clock_mhz(&self) -> Answer<u32> {
        answer(self.0.clock_info(Clock::SM))
    }
    fn sm_clock_max_mhz(&self) -> Answer<u32> {
        answer(self.0.max_clock_info(Clock::SM))
    }
    fn ecc_uncorrectable_errors(&self) -> Answer<u64> {
        answer(
            self.0
                .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        )
    }
    fn retired_pages_pending(&self) -> Answer<bool> {
        answer(self.0.are_pages_pending_retired())
    }
    fn remapped_rows_pending(&self) -> Answer<bool> {
        self.field_flag(NVML_FI_DEV_REMAPPED_PENDING)
    }
    fn remapped_rows_failed(&self) -> Answer<bool> {
        self.field_flag(NVML_FI_DEV_REMAPPED_FAILURE)
    }
    fn pcie_link_generation(&self) -> Answer<u32> {
        answer(self.0.current_pcie_link_gen())
    }
    fn pcie_link_generation_max(&self) -> Answer<u32> {
        answer(self.0.max_pcie_link_gen())
    }
    fn pcie_link_width(&self) -> Answer<u32> {
        answer(self.0.current_pcie_link_width())
    }
    fn pcie_link_width_max(&self) -> Answer<u32> {
        answer(self.0.max_pcie_link_width())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real NVML path. Runs only where a GPU and its driver are: `INFERPICK_TEST_NVML=1
    /// cargo test -p inferpick-agent nvml -- --ignored`.
    #[test]
    #[ignore = "needs an NVIDIA GPU; set INFERPICK_TEST_NVML=1 and pass --ignored"]
    fn nvml_reads_real_gpus() {
        if std::env::var("INFERPICK_TEST_NVML").as_deref() != Ok("1") {
            eprintln!("INFERPICK_TEST_NVML is not 1: skipped");
            return;
        }
        let source = NvmlSource::open(None).expect("NVML initialises");
        let gpus = source.read();
        assert!(!gpus.is_empty(), "NVML sees no GPU");
        for g in &gpus {
            eprintln!("{g:?}");
            assert!(g.uuid.starts_with("GPU-"), "{}", g.uuid);
            let (used, total) = (g.memory_used_bytes.unwrap(), g.memory_total_bytes.unwrap());
            assert!(total > 0 && used <= total);
            assert!(g.utilization_percent.unwrap() <= 100.0);
            assert!(g.power_watts.unwrap() > 0.0);
            let h = g.health.as_ref().expect("NVML reads carry health");
            eprintln!(
                "  throttle {:?}, SM clock {:?} of {:?} MHz, XIDs {:?}, uncorrectable ECC {:?}, \
                 retired pages pending {:?}, rows pending {:?} failed {:?}, \
                 PCIe gen {:?} of {:?} x{:?} of x{:?}",
                h.throttle,
                h.sm_clock_mhz,
                h.sm_clock_max_mhz,
                h.xid_errors,
                h.ecc_uncorrectable_errors,
                h.retired_pages_pending,
                h.remapped_rows_pending,
                h.remapped_rows_failed,
                h.pcie_link_generation,
                h.pcie_link_generation_max,
                h.pcie_link_width,
                h.pcie_link_width_max,
            );
            assert!(!h.lost);
            assert_eq!(h.fatal(), None, "a healthy GPU reads as fatal: {h:?}");
            let (now, max) = (h.sm_clock_mhz.unwrap(), h.sm_clock_max_mhz.unwrap());
            assert!(now > 0 && now <= max, "SM clock {now} of {max} MHz");
            if let (Some(now), Some(max)) = (h.pcie_link_generation, h.pcie_link_generation_max) {
                assert!(now >= 1 && now <= max, "PCIe gen {now} of {max}");
            }
            if let (Some(now), Some(max)) = (h.pcie_link_width, h.pcie_link_width_max) {
                assert!(now >= 1 && now <= max, "PCIe x{now} of x{max}");
            }
        }
        let first = gpus[0].uuid.clone();
        let one = NvmlSource::open(Some(vec![GpuId::Uuid(first.clone())]))
            .unwrap()
            .read();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].uuid, first);
    }

    #[test]
    fn without_the_library_open_fails_cleanly() {
        if std::path::Path::new("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1").exists() {
            return;
        }
        match NvmlSource::open(None) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(_) => panic!("NVML opened without libnvidia-ml"),
        }
    }
}
