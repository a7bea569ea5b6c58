//! GPU readings through NVML (`libnvidia-ml.so.1`, loaded at run time: the agent builds and runs
//! without it).

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;

use super::{GpuId, GpuSource};
use inferpick_schema::Gpu;

/// NVML, initialised once, and the devices this pod owns.
pub struct NvmlSource {
    nvml: Nvml,
    /// `None`: every device NVML sees.
    selection: Option<Vec<GpuId>>,
}

impl NvmlSource {
    /// Loads NVML. Fails with `LibloadingError` without the library, `DriverNotLoaded` without a
    /// driver, and names a selected GPU that NVML does not know.
    pub fn open(selection: Option<Vec<GpuId>>) -> Result<Self, NvmlError> {
        let nvml = Nvml::init()?;
        if let Some(ids) = &selection {
            for id in ids {
                match id {
                    GpuId::Index(i) => nvml.device_by_index(*i).map(|_| ())?,
                    GpuId::Uuid(u) => nvml.device_by_uuid(u.as_str()).map(|_| ())?,
                }
            }
        }
        Ok(NvmlSource { nvml, selection })
    }

    fn sample(&self, device: nvml_wrapper::Device<'_>) -> Option<Gpu> {
        let uuid = device.uuid().ok()?;
        let memory = device.memory_info().ok();
        Some(Gpu {
            uuid,
            index: device.index().ok(),
            name: device.name().ok(),
            memory_used_bytes: memory.as_ref().map(|m| m.used),
            memory_total_bytes: memory.as_ref().map(|m| m.total),
            utilization_percent: device.utilization_rates().ok().map(|u| f64::from(u.gpu)),
            temperature_celsius: device
                .temperature(TemperatureSensor::Gpu)
                .ok()
                .map(f64::from),
            power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            health: None,
        })
    }
}

impl GpuSource for NvmlSource {
    fn read(&self) -> Vec<Gpu> {
        let devices: Vec<_> = match &self.selection {
            Some(ids) => ids
                .iter()
                .filter_map(|id| match id {
                    GpuId::Index(i) => self.nvml.device_by_index(*i).ok(),
                    GpuId::Uuid(u) => self.nvml.device_by_uuid(u.as_str()).ok(),
                })
                .collect(),
            None => {
                let count = self.nvml.device_count().unwrap_or(0);
                (0..count)
                    .filter_map(|i| self.nvml.device_by_index(i).ok())
                    .collect()
            }
        };
        devices
            .into_iter()
            .filter_map(|d| self.sample(d))
            .take(inferpick_schema::Limits::MAX_GPUS)
            .collect()
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
