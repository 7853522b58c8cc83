package virt

import (
	"fmt"
	"slices"

	"opendev.org/x/ferry/pkg/errdefs"
)

// Versions are libvirt's and QEMU's versions as libvirt reports them:
// major*1,000,000 + minor*1,000 + micro.
type Versions struct {
	Libvirt uint64
	QEMU    uint64
}

// V builds a version number.
func V(major, minor, micro uint64) uint64 { return major*1_000_000 + minor*1_000 + micro }

func fmtV(v uint64) string { return fmt.Sprintf("%d.%d.%d", v/1_000_000, v/1_000%1_000, v%1_000) }

// capRule refuses a spec the connected versions cannot run. Each rule names
// where its fact comes from.
type capRule struct {
	name    string
	applies func(MigrateSpec) bool
	ok      func(Versions) bool
	why     string
	source  string
}

func hasAny(s []string, vs ...string) bool {
	for _, v := range vs {
		if slices.Contains(s, v) {
			return true
		}
	}
	return false
}

var capRules = []capRule{
	{
		name:    "multifd-compression",
		applies: func(s MigrateSpec) bool { return hasAny(s.Compression, "zlib", "zstd") },
		ok:      func(v Versions) bool { return v.Libvirt >= V(9, 4, 0) },
		why:     "zlib/zstd compression of parallel (multifd) migration needs libvirt ≥ 9.4.0",
		source:  "lab: libvirt 9.0.0 answers \"Unsupported compression method 'zstd'\" (reference/lab.md); libvirt 9.4.0 NEWS",
	},
	{
		name:    "multifd-compression-needs-parallel",
		applies: func(s MigrateSpec) bool { return hasAny(s.Compression, "zlib", "zstd") && s.Parallel < 2 },
		ok:      func(Versions) bool { return false },
		why:     "zlib/zstd compression exists only for parallel (multifd) migration",
		source:  "libvirt qemu_migration_params.c: zlib/zstd are multifd compression methods",
	},
	{
		name:    "legacy-compression-not-parallel",
		applies: func(s MigrateSpec) bool { return hasAny(s.Compression, "xbzrle", "mt") && s.Parallel > 1 },
		ok:      func(Versions) bool { return false },
		why:     "xbzrle/mt compression cannot be combined with parallel (multifd) migration",
		source:  "libvirt qemu_migration_params.c: xbzrle and mt are refused with VIR_MIGRATE_PARALLEL",
	},
	{
		name:    "mt-compression-removed",
		applies: func(s MigrateSpec) bool { return hasAny(s.Compression, "mt") },
		ok:      func(v Versions) bool { return v.QEMU < V(9, 1, 0) },
		why:     "mt compression was deprecated in QEMU 8.2 and removed in 9.1",
		source:  "QEMU docs/about/deprecated.rst \"old compression method (since 8.2)\"; removed-features.rst (9.1)",
	},
	{
		name:    "postcopy-with-parallel",
		applies: func(s MigrateSpec) bool { return s.PostCopy && s.Parallel > 1 },
		ok:      func(v Versions) bool { return v.QEMU >= V(10, 1, 0) },
		why:     "post-copy together with parallel connections needs QEMU ≥ 10.1",
		source:  "nova [libvirt] live_migration_parallel_connections help (reference/live-migration-anchors.md §2.1)",
	},
	{
		name:    "postcopy-resume",
		applies: func(s MigrateSpec) bool { return s.PostcopyResume },
		ok:      func(v Versions) bool { return v.Libvirt >= V(8, 5, 0) },
		why:     "post-copy recovery (VIR_MIGRATE_POSTCOPY_RESUME) needs libvirt ≥ 8.5.0",
		source:  "libvirt 8.5.0 NEWS: post-copy recovery",
	},
	{
		name:    "tls-destination",
		applies: func(s MigrateSpec) bool { return s.TLSDestination != "" },
		ok:      func(v Versions) bool { return v.Libvirt >= V(6, 0, 0) },
		why:     "the tls.destination parameter needs libvirt ≥ 6.0.0",
		source:  "libvirt-domain.h VIR_MIGRATE_PARAM_TLS_DESTINATION (since 6.0.0)",
	},
	{
		name:    "auto-converge-params",
		applies: func(s MigrateSpec) bool { return !s.AutoConverge && (s.AutoConvergeIni > 0 || s.AutoConvergeInc > 0) },
		ok:      func(Versions) bool { return false },
		why:     "auto_converge.initial/increment need the auto-converge flag",
		source:  "libvirt-domain.h VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL",
	},
}

// CheckCapabilities refuses, with ErrInvalidArgument and before libvirt is
// called, a spec the connected libvirt/QEMU cannot run.
func CheckCapabilities(v Versions, s MigrateSpec) error {
	for _, r := range capRules {
		if r.applies(s) && !r.ok(v) {
			return fmt.Errorf("migrate: %w: %s (connected: libvirt %s, QEMU %s)", errdefs.ErrInvalidArgument, r.why,
				fmtV(v.Libvirt), fmtV(v.QEMU))
		}
	}
	return nil
}
