// Package nova makes ferryd a Nova compute host for the live-migration
// family of RPCs (native mode): it serves compute RPC 6.0–6.4 and the 5.x
// forms a Zed conductor may send, keeps the conductor's records true
// through object_action saves, and runs each migration through the engine
// (pkg/migration), implementing its hooks with Nova's calls to the
// destination (pre_live_migration, post_live_migration_at_destination,
// rollback_live_migration_at_destination).
//
// Nova objects travel as nova_object primitives; Object keeps every field
// it received, the ones ferry does not model included, answers at the
// version it received and lists what it changed in nova_object.changes,
// since the conductor saves only those. Errors go back as nova.exception
// classes, because the class decides what the conductor does next:
// MigrationPreCheckError or an Invalid subclass makes it try another host.
package nova
