// Package unitfile reads systemd unit files for the packaging tests of
// both commands.
package unitfile

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Parse reads a unit file into section -> key -> values (a key may
// repeat); comments and blank lines are skipped.
func Parse(path string) (map[string]map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	u := map[string]map[string][]string{}
	sec := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		ln := strings.TrimSpace(sc.Text())
		switch {
		case ln == "" || ln[0] == '#' || ln[0] == ';':
		case ln[0] == '[':
			sec = strings.Trim(ln, "[]")
			u[sec] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(ln, "=")
			if !ok {
				return nil, fmt.Errorf("%s: bad unit line %q", path, ln)
			}
			u[sec][k] = append(u[sec][k], v)
		}
	}
	return u, sc.Err()
}
