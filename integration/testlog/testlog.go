// Package testlog sends a component's logrus lines to the test's own log,
// so that they show with the test that caused them (and only when it
// fails or runs with -v).
package testlog

import (
	"io"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// New returns a logger writing at level and above to t's log.
func New(t testing.TB, level logrus.Level) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(writer{t})
	l.SetLevel(level)
	return logrus.NewEntry(l)
}

type writer struct{ t testing.TB }

func (w writer) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Writer writes each write (a child process's stderr, say) as a line of
// t's log.
func Writer(t testing.TB) io.Writer { return writer{t} }
