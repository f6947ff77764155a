pub mod api_keys;
pub mod query;
pub mod request;
pub mod response;
