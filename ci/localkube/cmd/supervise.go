package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// supervisor runs the components as child processes. The first one to exit
// takes the node down: the others are stopped in reverse start order and
// localkube exits saying which one it was, so the node is reported down,
// never half up. Each component logs to a file of its own under
// {data}/localkube/logs (rotated at logCap).
type supervisor struct {
	logs string
	env  []string

	mu      sync.Mutex
	order   []*child
	down    chan string // the first component that ended, and how
	stopped bool
	reason  string
	done    chan struct{}
	once    sync.Once

	// Children are started from one OS thread, so that their parent-death
	// signal (sent when the thread that forked them ends) fires only when
	// localkube itself ends.
	spawn chan spawnReq
}

type child struct {
	name string
	cmd  *exec.Cmd
	exit chan struct{}
	err  error
	log  *os.File
}

type spawnReq struct {
	c   *child
	res chan error
}

const logCap = 32 << 20

func newSupervisor(logs string, env []string) *supervisor {
	s := &supervisor{logs: logs, env: env, down: make(chan string, 16), done: make(chan struct{}), spawn: make(chan spawnReq)}
	go func() {
		runtime.LockOSThread()
		for r := range s.spawn {
			r.res <- r.c.cmd.Start()
		}
	}()
	return s
}

func (s *supervisor) start(name, program string, args []string) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return fmt.Errorf("localkube is stopping")
	}
	s.mu.Unlock()
	log, err := openLog(filepath.Join(s.logs, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(program, args...)
	cmd.Env = s.env
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	fmt.Fprintf(log, "\n==== localkube starts %s at %s ====\n", name, time.Now().UTC().Format(time.RFC3339))
	c := &child{name: name, cmd: cmd, exit: make(chan struct{}), log: log}
	res := make(chan error)
	s.spawn <- spawnReq{c, res}
	if err := <-res; err != nil {
		log.Close()
		return fmt.Errorf("%s could not start: %v", name, err)
	}
	logf("%s started (pid %d), log %s", name, cmd.Process.Pid, log.Name())
	s.mu.Lock()
	s.order = append(s.order, c)
	s.mu.Unlock()
	go func() {
		c.err = cmd.Wait()
		close(c.exit)
		how := "exited"
		if c.err != nil {
			how = c.err.Error()
		}
		s.down <- fmt.Sprintf("%s ended (%s)", name, how)
	}()
	return nil
}

// wait blocks until a component ends (or a stop was asked for), takes the
// node down and returns why.
func (s *supervisor) wait() string {
	select {
	case why := <-s.down:
		return s.shutdown(why)
	case <-s.done:
		return s.reason
	}
}

// failed says whether a component has ended (while starting up).
func (s *supervisor) failed() (string, bool) {
	select {
	case why := <-s.down:
		s.down <- why
		return why, true
	default:
		return "", false
	}
}

// shutdown stops every component in reverse start order: SIGTERM, then
// SIGKILL after its grace period. The first reason given is kept.
func (s *supervisor) shutdown(why string) string {
	s.once.Do(func() {
		s.mu.Lock()
		s.stopped = true
		s.reason = why
		order := append([]*child(nil), s.order...)
		s.mu.Unlock()
		if !strings.HasPrefix(why, "localkube got") {
			logf("%s: stopping every other component", why)
			s.recordDown(why, order)
		}
		for i := len(order) - 1; i >= 0; i-- {
			c := order[i]
			select {
			case <-c.exit:
				continue
			default:
			}
			grace := 10 * time.Second
			if c.name == "etcd" || c.name == "containerd" {
				grace = 20 * time.Second
			}
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.exit:
			case <-time.After(grace):
				logf("%s did not stop within %v: killed", c.name, grace)
				_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
				<-c.exit
			}
			logf("%s stopped", c.name)
			c.log.Close()
		}
		close(s.done)
	})
	<-s.done
	return s.reason
}

// recordDown writes {data}/localkube/down (which component ended, how) and
// prints the last lines of its log, for `kubestrap status` and `logs`.
func (s *supervisor) recordDown(why string, order []*child) {
	for _, c := range order {
		if strings.HasPrefix(why, c.name+" ") {
			logf("the last lines of %s's log (%s):", c.name, c.log.Name())
			for _, l := range tail(c.log.Name(), 8) {
				fmt.Fprintf(os.Stderr, "    %s\n", l)
			}
		}
	}
	_ = writeAtomic(filepath.Join(filepath.Dir(s.logs), "down"), []byte(why+"\n"), 0o644)
}

// tail returns the last n lines of a file (reading at most its last 64 KiB).
func tail(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 64<<10 {
		_, _ = f.Seek(st.Size()-64<<10, io.SeekStart)
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return lines
}

// openLog opens a component's log for appending; one past logCap is moved
// to NAME.1 first. Children write to the file itself, not through a pipe:
// a pipe would keep Wait from returning while a grandchild (a containerd
// shim) holds it.
func openLog(path string) (*os.File, error) {
	if st, err := os.Stat(path); err == nil && st.Size() > logCap {
		_ = os.Rename(path, path+".1")
	}
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
}
