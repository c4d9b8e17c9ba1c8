//! What Rampart tells about itself: the event history ([`events`]: what the
//! control loop and operators did), the process-wide counters and latency
//! histograms ([`counters`]), and the last minutes of rates, latencies and
//! lag the dashboard charts ([`history`]), and what a policy shows of
//! itself ([`policy_view`]). `admin/` serves them.

pub mod counters;
pub mod events;
pub mod history;
pub mod policy_view;
pub mod risks;
pub mod throttled;
