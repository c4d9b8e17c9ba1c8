//! What Rampart tells about itself: the event history ([`events`]: what the
//! control loop and operators did) and the process-wide counters and
//! latency histograms ([`counters`]). `admin/` serves both.

pub mod counters;
pub mod events;
