//go:build integration

package smoke

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"opendev.org/x/ferry/integration/lab"
)

// One lab for the whole package.
var theLab *lab.Lab

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	l, err := lab.Start(ctx, lab.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	theLab = l
	code := m.Run()
	l.Close()
	os.Exit(code)
}
