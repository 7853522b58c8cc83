package stack

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// dumpRecipe changes whenever what the stack puts into its databases
// before dumping them changes; with the package versions it keys the cache.
const dumpRecipe = "stack-db-1"

// dbGroup is one service's databases, initialised by its own tools and
// cached as one dump per package version.
type dbGroup struct {
	name    string   // "nova"
	pkg     string   // the package whose version keys the dump
	dbs     []string // databases
	init    func(ctx context.Context) error
	version string
	// dumpLater: the caller dumps the group once it finished it through
	// the service's API (Keystone's users and catalog).
	dumpLater bool
}

// dumpPath is the cached dump of a group for its package version and the
// stack's recipe (which includes the passwords and addresses the data holds).
func (g *dbGroup) dumpPath(recipe string) string {
	h := sha256.Sum256([]byte(dumpRecipe + "\n" + recipe + "\n" + strings.Join(g.dbs, ",")))
	v := strings.NewReplacer(":", "_", "~", "_", "+", "_").Replace(g.version)
	return filepath.Join(CacheDir, "db", fmt.Sprintf("%s-%s-%x.sql", g.name, v, h[:6]))
}

func pkgVersion(ctx context.Context, pkg string) (string, error) {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Version}", pkg).Output()
	if err != nil || len(out) == 0 {
		return "", fmt.Errorf("stack: package %s is not installed: run integration/deps.sh", pkg)
	}
	return string(out), nil
}

// mariadb is the stack's private MariaDB: its own datadir, socket and port,
// never the machine's instance.
type mariadb struct {
	dir, sock string
	proc      *proc
}

func newMariaDB() *mariadb {
	return &mariadb{dir: workDir("mariadb"), sock: workDir("mariadb", "mysqld.sock")}
}

func (m *mariadb) service() service {
	return service{
		Name: "mariadb",
		Args: []string{"mariadbd", "--no-defaults", "--datadir=" + filepath.Join(m.dir, "data"), "--socket=" + m.sock,
			"--port=" + fmt.Sprint(PortMariaDB), "--bind-address=127.0.0.1", "--pid-file=" + filepath.Join(m.dir, "mysqld.pid"),
			"--user=root", "--skip-name-resolve", "--skip-log-bin", "--max-connections=400",
			"--innodb-buffer-pool-size=128M", "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
			"--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci"},
		Ports: []string{fmt.Sprintf("127.0.0.1:%d", PortMariaDB)},
		Ready: func(ctx context.Context) error {
			c, err := net.DialTimeout("unix", m.sock, time.Second)
			if err != nil {
				return err
			}
			return c.Close()
		},
		Timeout: time.Minute,
	}
}

// start initialises an empty datadir, starts the server and gives root a
// password for TCP (what the services' pymysql URLs use).
func (m *mariadb) start(ctx context.Context) error {
	data := filepath.Join(m.dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	if err := run(ctx, "mariadb-install-db", nil, "mariadb-install-db", "--no-defaults", "--datadir="+data,
		"--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"); err != nil {
		return err
	}
	p, err := startService(ctx, m.service())
	if err != nil {
		return err
	}
	m.proc = p
	return m.sql(ctx, fmt.Sprintf(`CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '%s';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;`, dbPassword))
}

func (m *mariadb) sql(ctx context.Context, q string) error {
	cmd := exec.CommandContext(ctx, "mariadb", "--no-defaults", "-S", m.sock, "-u", "root", "-e", q)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("stack: mariadb: %w: %s", err, out)
	}
	return nil
}

// restore loads a cached dump.
func (m *mariadb) restore(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, "mariadb", "--no-defaults", "-S", m.sock, "-u", "root")
	cmd.Stdin = f
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("stack: restore %s: %w: %s", path, err, out)
	}
	return nil
}

// dump writes the group's databases to the cache (atomically).
func (m *mariadb) dump(ctx context.Context, dbs []string, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	cmd := exec.CommandContext(ctx, "mariadb-dump", append([]string{"--no-defaults", "-S", m.sock, "-u", "root",
		"--single-transaction", "--skip-comments", "--databases"}, dbs...)...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = f, &stderr
	err = cmd.Run()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("stack: dump %s: %w: %s", strings.Join(dbs, ","), err, stderr.String())
	}
	return os.Rename(tmp, path)
}

// prepare gives every group its databases: restored from the cache when a
// dump for its package version exists, else created, initialised by the
// group's own tools, and dumped (unless dumpLater). Groups run
// concurrently.
func (m *mariadb) prepare(ctx context.Context, groups []*dbGroup, recipe string, logf func(string, ...any)) (restored map[string]bool, err error) {
	restored = map[string]bool{}
	type res struct {
		g        *dbGroup
		restored bool
		took     time.Duration
		err      error
	}
	ch := make(chan res, len(groups))
	for _, g := range groups {
		go func() { // owner: prepare (it waits for every result)
			t := time.Now()
			r := res{g: g}
			v, err := pkgVersion(ctx, g.pkg)
			if err != nil {
				r.err = err
				ch <- r
				return
			}
			g.version = v
			if _, err := os.Stat(g.dumpPath(recipe)); err == nil {
				r.err, r.restored = m.restore(ctx, g.dumpPath(recipe)), true
			} else {
				var q strings.Builder
				for _, db := range g.dbs {
					fmt.Fprintf(&q, "CREATE DATABASE %s CHARACTER SET utf8;", db)
				}
				if r.err = m.sql(ctx, q.String()); r.err == nil {
					r.err = g.init(ctx)
				}
				if r.err == nil && !g.dumpLater {
					r.err = m.dump(ctx, g.dbs, g.dumpPath(recipe))
				}
			}
			r.took = time.Since(t)
			ch <- r
		}()
	}
	var errs []error
	for range groups {
		r := <-ch
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		restored[r.g.name] = r.restored
		how := "initialised"
		if r.restored {
			how = "restored from " + filepath.Base(r.g.dumpPath(recipe))
		}
		logf("stack: databases %s %s in %.1fs", r.g.name, how, r.took.Seconds())
	}
	return restored, errors.Join(errs...)
}
