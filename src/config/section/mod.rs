//! The configuration in sections, one per component: each reads and validates its
//! own settings and produces the settings struct its component takes.

mod backend;
mod listeners;
mod logging;
mod lookups;
mod policy;
mod sasl;

pub(crate) use backend::http_description;
pub use backend::{BackendSection, HttpDescription};
pub use listeners::ListenerSection;
pub use logging::LoggingSection;
pub use lookups::LookupSection;
pub use policy::PolicySection;
pub use sasl::SaslSection;
