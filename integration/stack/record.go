package stack

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Fixed places. One stack runs on a machine at a time (lockFile).
const (
	StateDir = "/run/ferry-stack"       // record.json, state.json
	CacheDir = "/var/cache/ferry-stack" // database dumps (kept between runs)
	lockFile = "/run/ferry-stack.lock"  // held by the owner for the stack's life
	WorkDir  = "/var/lib/ferry-stack"   // configuration, MariaDB's datadir, Glance's store (reaped)
	LogDir   = "/var/log/ferry-stack"   // every service's log; kept after a teardown until the next start
)

// Where this package keeps its record, logs and work tree: StateDir,
// LogDir and WorkDir, except in unit tests.
var (
	recDir   = StateDir
	logDir   = LogDir
	workBase = WorkDir
)

func recordLck() string { return filepath.Join(recDir, "record.lock") } // serialises record updates between processes
func stateFile() string { return filepath.Join(recDir, "state.json") }  // what attachers read (Info)
func recFile() string   { return filepath.Join(recDir, "record.json") } // what the next run reaps

// record is everything a run made outside the lab's own record: the
// processes of the root namespaces (and those an attached process started
// in a host), and the broker's vhost and user. It is saved before each
// thing is made, so a later run can undo it even if this one was killed.
type record struct {
	Owner int       `json:"owner"`
	Procs []procRec `json:"procs"`
	VHost string    `json:"vhost,omitempty"`
	User  string    `json:"user,omitempty"`
}

// procRec is one process group: the leader's PID is the group id.
type procRec struct {
	Name  string `json:"name"`  // the service
	PGID  int    `json:"pgid"`  // leader pid == process group id
	Start uint64 `json:"start"` // the leader's start time (clock ticks since boot), to never kill a reused PID
}

// updateRecord applies f to the record on disk under an exclusive lock, so
// that an owner and attached processes can add to it concurrently.
func updateRecord(f func(r *record)) error {
	if err := os.MkdirAll(recDir, 0o755); err != nil {
		return err
	}
	lk, err := os.OpenFile(recordLck(), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lk.Close()
	if err := syscall.Flock(int(lk.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	r, err := readRecord()
	if err != nil {
		return err
	}
	f(r)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := recFile() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, recFile())
}

func readRecord() (*record, error) {
	b, err := os.ReadFile(recFile())
	if errors.Is(err, os.ErrNotExist) {
		return &record{}, nil
	}
	if err != nil {
		return nil, err
	}
	r := &record{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("stack record %s: %w", recFile(), err)
	}
	return r, nil
}

// reapRecord stops every recorded process group whose leader is the
// recorded process (or is gone, leaving members that carry its group id),
// then hands the broker objects to dropBroker and removes the record.
func reapRecord(logf func(string, ...any), dropBroker func(vhost, user string)) error {
	r, err := readRecord()
	if err != nil {
		return err
	}
	var groups []int
	for _, p := range r.Procs {
		if st, ok := startTime(p.PGID); ok && st != p.Start {
			continue // the PID was reused by something else
		}
		if len(groupMembers(p.PGID)) > 0 {
			groups = append(groups, p.PGID)
		}
	}
	if len(groups) > 0 {
		logf("stack: stopping %d process groups", len(groups))
		killGroups(groups, 5*time.Second)
	}
	if (r.VHost != "" || r.User != "") && dropBroker != nil {
		dropBroker(r.VHost, r.User)
	}
	if err := os.RemoveAll(workBase); err != nil {
		return err
	}
	for _, f := range []string{recFile(), stateFile()} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// killGroups sends SIGTERM to each group, waits up to grace, then SIGKILLs
// what is left.
func killGroups(groups []int, grace time.Duration) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		for _, g := range groups {
			_ = syscall.Kill(-g, sig)
		}
		if waitGone(groups, grace) {
			return
		}
		grace = 5 * time.Second // after SIGKILL: until the kernel has them gone
	}
}

// waitGone waits up to d for every member of the groups to be gone.
func waitGone(groups []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		alive := 0
		for _, g := range groups {
			alive += len(groupMembers(g))
		}
		if alive == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// procStat returns fields of /proc/PID/stat after the command name
// (field 3 onwards), or nil.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// startTime is field 22 of /proc/PID/stat.
func startTime(pid int) (uint64, bool) {
	f := procStat(pid)
	if len(f) < 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(f[19], 10, 64)
	return n, err == nil
}

// groupMembers lists the live (not zombie) processes of process group g.
func groupMembers(g int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := procStat(pid)
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		if pg, _ := strconv.Atoi(f[2]); pg == g {
			out = append(out, pid)
		}
	}
	return out
}

// alive tells whether pid runs and started at start.
func alive(pid int, start uint64) bool {
	st, ok := startTime(pid)
	return ok && st == start && syscall.Kill(pid, 0) == nil
}

// workDir is where a run keeps its configuration, logs and data.
func workDir(parts ...string) string { return filepath.Join(append([]string{workBase}, parts...)...) }

// RSS sums the resident memory of every process of the stack: the
// recorded process groups and whatever runs in the lab hosts' network
// namespaces (libvirtd, QEMU), each process once. pss shares each shared
// page among the processes that map it (smaps_rollup's Pss).
func (s *Stack) RSS() (rss, pss uint64, err error) {
	r, err := readRecord()
	if err != nil {
		return 0, 0, err
	}
	pids := map[int]bool{}
	for _, p := range r.Procs {
		for _, pid := range groupMembers(p.PGID) {
			pids[pid] = true
		}
	}
	for _, h := range s.Hosts {
		out, _ := exec.Command("ip", "netns", "pids", h.Netns).Output()
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids[pid] = true
			}
		}
	}
	for pid := range pids {
		rss += procKB(pid, "status", "VmRSS:") << 10
		pss += procKB(pid, "smaps_rollup", "Pss:") << 10
	}
	return rss, pss, nil
}

// procKB reads a "Name: N kB" line of /proc/PID/<file>.
func procKB(pid int, file, key string) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + file)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == key {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb
		}
	}
	return 0
}
