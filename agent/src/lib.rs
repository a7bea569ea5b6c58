//! inferpick agent
