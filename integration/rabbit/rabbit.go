// Package rabbit gives integration tests a RabbitMQ to talk to: it starts
// the broker when it is not running and hands each test package a private
// virtual host, so that packages cannot see each other's queues.
package rabbit

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Broker is where tests connect: FERRY_AMQP_URL's host and credentials
// (default guest:guest@127.0.0.1:5672).
type Broker struct {
	Host, User, Password string
}

// FromEnv reads FERRY_AMQP_URL.
func FromEnv() (Broker, error) {
	s := os.Getenv("FERRY_AMQP_URL")
	if s == "" {
		s = "amqp://guest:guest@127.0.0.1:5672/"
	}
	u, err := url.Parse(s)
	if err != nil {
		return Broker{}, fmt.Errorf("FERRY_AMQP_URL: %w", err)
	}
	p, _ := u.User.Password()
	return Broker{Host: u.Host, User: u.User.Username(), Password: p}, nil
}

// URL is the oslo transport_url for a virtual host.
func (b Broker) URL(vhost string) string {
	return fmt.Sprintf("rabbit://%s:%s@%s/%s", url.PathEscape(b.User), url.PathEscape(b.Password), b.Host, url.PathEscape(vhost))
}

// EnsureRunning starts the local rabbitmq-server when rabbitmqctl cannot
// reach it, and waits until it serves.
func EnsureRunning(ctx context.Context) error {
	if ctl(ctx, 20*time.Second, "-q", "status") == nil {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "rabbitmq-server", "-detached").CombinedOutput(); err != nil {
		return fmt.Errorf("rabbitmq-server -detached: %w: %s", err, out)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if ctl(ctx, 20*time.Second, "-q", "await_startup") == nil && ctl(ctx, 20*time.Second, "-q", "status") == nil {
			return nil
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("rabbitmq did not start within 2 minutes")
}

// NewVHost creates a virtual host the broker's user may use fully, and
// returns a function that deletes it.
func NewVHost(ctx context.Context, b Broker, name string) (func(), error) {
	_ = ctl(ctx, time.Minute, "-q", "delete_vhost", name)
	if err := ctl(ctx, time.Minute, "-q", "add_vhost", name); err != nil {
		return nil, err
	}
	if err := ctl(ctx, time.Minute, "-q", "set_permissions", "-p", name, b.User, ".*", ".*", ".*"); err != nil {
		return nil, err
	}
	return func() { _ = ctl(context.Background(), time.Minute, "-q", "delete_vhost", name) }, nil
}

// StopApp and StartApp restart the broker application (the Erlang node stays).
func StopApp(ctx context.Context) error  { return ctl(ctx, 2*time.Minute, "-q", "stop_app") }
func StartApp(ctx context.Context) error { return ctl(ctx, 2*time.Minute, "-q", "start_app") }

// Ctl runs rabbitmqctl and returns its output.
func Ctl(ctx context.Context, args ...string) (string, error) {
	c, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(c, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func ctl(ctx context.Context, timeout time.Duration, args ...string) error {
	c, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := Ctl(c, args...)
	return err
}

// NewUser creates a user with full rights on one virtual host only, and
// returns the broker as that user sees it and a function that deletes it.
func NewUser(ctx context.Context, b Broker, vhost, user, password string) (Broker, func(), error) {
	_ = ctl(ctx, time.Minute, "-q", "delete_user", user)
	if err := ctl(ctx, time.Minute, "-q", "add_user", user, password); err != nil {
		return Broker{}, nil, err
	}
	if err := ctl(ctx, time.Minute, "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"); err != nil {
		_ = ctl(context.Background(), time.Minute, "-q", "delete_user", user)
		return Broker{}, nil, err
	}
	b.User, b.Password = user, password
	return b, func() { _ = ctl(context.Background(), time.Minute, "-q", "delete_user", user) }, nil
}
