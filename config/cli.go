package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// CLI is the admin CLI's own file (ferry.yaml): how `ferry` reaches each
// host's ferryd for what Nova's records lack. The cloud itself comes from
// clouds.yaml, as openstackclient reads it.
//
//	ferryd:
//	  url: https://{host}:9779      # any host; {host} is Nova's compute host name
//	  hosts:                        # per-host overrides
//	    compute-1: https://192.0.2.11:9779
//	  ca_file: /etc/ferry/status-ca.pem
//	  timeout: 5s
//	drain:
//	  bandwidth: 1100               # MiB/s of the migration network (optional)
type CLI struct {
	Ferryd CLIFerryd `yaml:"ferryd"`
	Drain  CLIDrain  `yaml:"drain"`
}

// CLIDrain is what `ferry drain` plans with when its flags do not say.
type CLIDrain struct {
	// Bandwidth is the migration network's usable bandwidth from one host,
	// in MiB/s (--bandwidth overrides it); 0, the default, is unknown: the
	// drain is then bounded by --max-parallel alone.
	Bandwidth float64 `yaml:"bandwidth"`
}

// CLIFerryd is where the hosts' status APIs are.
type CLIFerryd struct {
	URL     string            `yaml:"url"`
	Hosts   map[string]string `yaml:"hosts"`
	CAFile  string            `yaml:"ca_file"`
	Timeout Duration          `yaml:"timeout"`
}

// CLIPath is where `ferry` looks for its file when neither --config nor
// $FERRY_CONFIG names one: $XDG_CONFIG_HOME/ferry/ferry.yaml, else
// ~/.config/ferry/ferry.yaml, else /etc/ferry/ferry.yaml.
func CLIPath() []string {
	var paths []string
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		paths = append(paths, filepath.Join(x, "ferry", "ferry.yaml"))
	} else if h, err := os.UserHomeDir(); err == nil {
		paths = append(paths, filepath.Join(h, ".config", "ferry", "ferry.yaml"))
	}
	return append(paths, "/etc/ferry/ferry.yaml")
}

// LoadCLI reads path strictly; path "" tries CLIPath's files in order and
// returns the zero CLI (no ferryd reachable) when none exists.
func LoadCLI(path string) (CLI, string, error) {
	if path == "" {
		for _, p := range CLIPath() {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
		if path == "" {
			return CLI{}, "", nil
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return CLI{}, path, fmt.Errorf("config: %w", err)
	}
	c, err := ParseCLI(b)
	if err != nil {
		return CLI{}, path, fmt.Errorf("%s: %w", path, err)
	}
	return c, path, nil
}

// ParseCLI decodes strictly and reports every problem at once.
func ParseCLI(b []byte) (CLI, error) {
	var c CLI
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return CLI{}, fmt.Errorf("config: %w", err)
	}
	var errs []error
	check := func(name, raw string, template bool) {
		s := raw
		if template {
			s = strings.ReplaceAll(s, "{host}", "host")
		}
		u, err := url.Parse(s)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %v", name, err))
		case u.Scheme != "https" && u.Scheme != "http":
			errs = append(errs, fmt.Errorf("%s: %q: want an http:// or https:// URL", name, raw))
		case u.Host == "":
			errs = append(errs, fmt.Errorf("%s: %q has no host", name, raw))
		}
	}
	if c.Ferryd.URL != "" {
		check("ferryd.url", c.Ferryd.URL, true)
	}
	for h, u := range c.Ferryd.Hosts {
		check("ferryd.hosts."+h, u, false)
	}
	if c.Ferryd.CAFile != "" {
		if _, err := os.Stat(c.Ferryd.CAFile); err != nil {
			errs = append(errs, fmt.Errorf("ferryd.ca_file: %v", err))
		}
	}
	if c.Ferryd.Timeout < 0 {
		errs = append(errs, fmt.Errorf("ferryd.timeout: must not be negative"))
	}
	if c.Drain.Bandwidth < 0 {
		errs = append(errs, fmt.Errorf("drain.bandwidth: must not be negative (MiB/s; 0 is unknown)"))
	}
	if len(errs) > 0 {
		return CLI{}, fmt.Errorf("config: %d problems:\n%w", len(errs), errors.Join(errs...))
	}
	return c, nil
}

// YAML writes v as YAML with the field names of its JSON encoding, so
// `-f yaml` and `-f json` show the same fields (config is the project's one
// importer of yaml.v3).
func YAML(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var plain any
	if err := dec.Decode(&plain); err != nil {
		return nil, err
	}
	return yaml.Marshal(numbers(plain))
}

// numbers turns the decoder's json.Number back into integers where they
// are (byte counts print as 3221225472, not 3.221225472e+09) and floats
// elsewhere.
func numbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n
		}
		if u, err := strconv.ParseUint(x.String(), 10, 64); err == nil {
			return u
		}
		f, _ := x.Float64()
		return f
	}
	return v
}
