package exceptions

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func testCounter(c prometheus.Metric) float64 {
	var m dto.Metric
	c.Write(&m)
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// countEvents returns the number of lines of a verified log.
func countEvents(t *testing.T, path string) int64 {
	t.Helper()
	h, err := verifyFile(path)
	if err != nil {
		t.Fatalf("Verify = %v", err)
	}
	return h.Seq
}

func TestConcurrentAppendsGoroutines(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		// Two registers on one store and log (as serve and the command line
		// are), each with several goroutines, never fork the chain.
		ctx := context.Background()
		e := newEnv(t, func(o *Options) { o.MaxPendingPerClient, o.MaxPerDayPerClient = -1, -1 })
		other := e.open(t, func(o *Options) { o.MaxPendingPerClient, o.MaxPerDayPerClient = -1, -1 })
		const per = 10
		var wg sync.WaitGroup
		errs := make(chan error, 4*per)
		for g, r := range []*Register{e.reg, e.reg, other, other} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < per; i++ {
					_, err := r.Submit(ctx, sub(fmt.Sprintf("10.%d.0.%d", g, i+1), "facebook", justification(i)))
					if err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("Submit: %v", err)
		}
		if n := len(e.events(t)); n != 4*per {
			t.Fatalf("log has %d events, want %d", n, 4*per)
		}
		if err := other.Verify(ctx); err != nil {
			t.Fatalf("Verify = %v", err)
		}
	})
}

// TestHelperProcess is run as a child process by
// TestConcurrentAppendsProcesses; it is a no-op otherwise.
func TestHelperProcess(t *testing.T) {
	db, log := os.Getenv("BALISE_EXC_DB"), os.Getenv("BALISE_EXC_LOG")
	if db == "" {
		return
	}
	ctx := context.Background()
	st, err := OpenSQLite(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, Options{Store: st, AuditLog: log, MaxPendingPerClient: -1, MaxPerDayPerClient: -1})
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(os.Getenv("BALISE_EXC_N"))
	who := os.Getenv("BALISE_EXC_WHO")
	for i := 0; i < n; i++ {
		if _, err := r.Submit(ctx, sub("10.200.0."+who, "facebook", justification(i))); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
}

func TestConcurrentAppendsProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	e := newEnv(t, nil)
	const procs, per = 3, 15
	var cmds []*exec.Cmd
	for p := 0; p < procs; p++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "BALISE_EXC_DB="+e.db, "BALISE_EXC_LOG="+e.log,
			"BALISE_EXC_N="+strconv.Itoa(per), "BALISE_EXC_WHO="+strconv.Itoa(p+1))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	done := make(chan error, procs)
	for _, c := range cmds {
		go func() { done <- c.Wait() }()
	}
	timeout := time.After(60 * time.Second)
	for range cmds {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("helper process: %v", err)
			}
		case <-timeout:
			for _, c := range cmds {
				c.Process.Kill()
			}
			t.Fatal("helper processes did not finish in 60 s")
		}
	}
	if n := countEvents(t, e.log); n != procs*per {
		t.Fatalf("log has %d events, want %d", n, procs*per)
	}
	if err := e.reg.Verify(context.Background()); err != nil {
		t.Fatalf("Verify = %v", err)
	}
}

// TestHelperSubmitter is run as a child process by TestKill9WhileSubmitting:
// it submits requests forever, printing each id once Submit returned.
func TestHelperSubmitter(t *testing.T) {
	db, log := os.Getenv("BALISE_EXC_KILL_DB"), os.Getenv("BALISE_EXC_KILL_LOG")
	if db == "" {
		return
	}
	ctx := context.Background()
	st, err := OpenSQLite(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, Options{Store: st, AuditLog: log, MaxPendingPerClient: -1, MaxPerDayPerClient: -1})
	if err != nil {
		t.Fatal(err)
	}
	who := os.Getenv("BALISE_EXC_WHO")
	for i := 0; ; i++ {
		rc, err := r.Submit(ctx, sub("10.250.0."+who, "facebook", fmt.Sprintf("Demande %s-%d pour le test de robustesse", who, i)))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(3)
		}
		fmt.Println("received", rc.ID)
	}
}

func TestKill9WhileSubmitting(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	e := newEnv(t, nil)
	received := map[string]bool{}
	for round := 0; round < 8; round++ {
		var cmds []*exec.Cmd
		outs := make(chan []string, 2)
		for p := 1; p <= 2; p++ {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperSubmitter$", "-test.count=1")
			cmd.Env = append(os.Environ(), "BALISE_EXC_KILL_DB="+e.db, "BALISE_EXC_KILL_LOG="+e.log,
				"BALISE_EXC_WHO="+strconv.Itoa(round*2+p))
			stdout, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds = append(cmds, cmd)
			go func() {
				var ids []string
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					if id, ok := strings.CutPrefix(sc.Text(), "received "); ok {
						ids = append(ids, id)
					} else if strings.HasPrefix(sc.Text(), "error") {
						ids = append(ids, "!"+sc.Text())
					}
				}
				outs <- ids
			}()
		}
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		for _, c := range cmds {
			c.Process.Kill() // SIGKILL
		}
		for range cmds {
			for _, id := range <-outs {
				if strings.HasPrefix(id, "!") {
					t.Fatalf("submitter failed: %s", id[1:])
				}
				received[id] = true
			}
		}
		for _, c := range cmds {
			c.Wait()
		}
	}
	if len(received) == 0 {
		t.Fatal("no request was received")
	}
	ctx := context.Background()
	r := e.open(t, nil)
	if err := r.Repair(ctx); err != nil {
		t.Fatalf("Repair after kills = %v", err)
	}
	if err := r.Verify(ctx); err != nil {
		t.Fatalf("Verify after kills = %v", err)
	}
	logged := map[string]bool{}
	readEvents(e.log, func(_ int, ev Event) error { logged[ev.ID] = true; return nil })
	for id := range received {
		if _, err := r.Get(ctx, id); err != nil || !logged[id] {
			t.Errorf("%s was reported received but is missing (store: %v, log: %v)", id, err, logged[id])
		}
	}
	orphaned, _ := os.ReadFile(e.log + ".orphaned")
	t.Logf("%d requests received across 16 SIGKILLs; %d bytes of uncommitted lines set aside", len(received), len(orphaned))
}
