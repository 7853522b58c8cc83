package oslo

import (
	"context"
	"errors"
	"fmt"

	"opendev.org/x/ferry/pkg/errdefs"
)

// CompanionCheck is what a companion-mode server needs of the broker
// before it serves.
type CompanionCheck struct {
	URL                 TransportURL
	TLS                 TLSOptions // [oslo_messaging_rabbit] ssl options
	Exchange            string     // Nova's control_exchange; default "nova"
	NovaComputeExchange string     // nova-compute's private one, ferry-<host>
	NovaComputeQueue    string     // compute.<host>, where forwards go
}

// CheckCompanion checks, over AMQP, that the host was cut over: what
// nova-compute publishes to its private exchange reaches Nova's (the
// alternate-exchange policy; a probe, ProbeAlternate), and nova-compute's
// queue exists for forwards to land in. Every problem is named, with what
// to do; an error wrapping errdefs.ErrNotFound may pass once nova-compute
// has started, one wrapping ErrUnavailable once the broker answers.
// (That no other consumer holds ferryd's own queue the server's exclusive
// consume checks itself.)
func CheckCompanion(ctx context.Context, c CompanionCheck) error {
	a, err := DialAdmin(ctx, AdminOptions{URL: c.URL, TLS: c.TLS, Exchange: c.Exchange})
	if err != nil {
		return fmt.Errorf("companion checks: %w", err)
	}
	defer a.Close()
	return checkCompanion(ctx, a, c)
}

// checkCompanion runs CheckCompanion's checks on a.
func checkCompanion(ctx context.Context, a *Admin, c CompanionCheck) error {
	var errs []error
	err := a.ProbeAlternate(ctx, c.NovaComputeExchange)
	switch {
	case errors.Is(err, ErrNoPrivateExchange):
		errs = append(errs, fmt.Errorf("%w: nova-compute has not started on its private exchange %s, or the cut-over did not run "+
			"(run `ferryd cutover to-companion`, which sets its control_exchange)", err, c.NovaComputeExchange))
	case errors.Is(err, ErrNoAlternate):
		errs = append(errs, fmt.Errorf("%w: what nova-compute sends to %s would not reach %s: the alternate-exchange policy is missing "+
			"or overridden by one of higher priority; run `ferryd cutover to-companion`", err, c.NovaComputeExchange, a.o.Exchange))
	case err != nil:
		errs = append(errs, err)
	}
	if _, err := a.Inspect(ctx, c.NovaComputeQueue); errors.Is(err, errdefs.ErrNotFound) {
		errs = append(errs, fmt.Errorf("%w: nothing could be forwarded to nova-compute: it has not started, or the cut-over did not run", err))
	} else if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("companion checks: %w", errors.Join(errs...))
	}
	return nil
}
