// Package status is ferryd's read-only HTTP API: what the engine holds,
// for operators and their tools, beside Prometheus's /metrics.
//
//	GET /v1/migrations        every migration the engine holds, newest first
//	GET /v1/migrations/{id}   one, by Nova's migration uuid; 404 for any other id
//	GET /v1/plan?instance=<uuid>[&dest=<host>][&sample=5s]
//	                          a dry run of a live migration of one of this
//	                          host's guests (404 for a guest not here, 400 for
//	                          a bad query): what would be copied and how, the
//	                          network, the measured dirty rate and the physics'
//	                          verdict; it changes nothing and dials no other host
//	GET /metrics              Prometheus's text format
//
// The answers are JSON wire structs of their own (Migration), never the
// journal's: Nova's objects and the request's credentials are not in
// them. An id is never echoed back.
//
// On loopback the API is open to the host's users. Beyond loopback
// (config refuses it otherwise) it is served over TLS only, and every
// request must carry a Keystone token (X-Auth-Token, or Authorization:
// Bearer) that Keystone says is valid and holds the admin role; a refused
// token gets 401, one without the role 403, an unreachable Keystone 503.
package status
