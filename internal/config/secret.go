package config

import (
	"fmt"
	"net/url"
	"os"
	"strings"
)

// ReadSecret reads a secret from the file at path, trimming one trailing
// line end. Errors name field and match ErrConfig.
func ReadSecret(field, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrConfig, field, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// Credentials name a user and where its password comes from: a file, or an
// environment variable, or neither. Prefix is the YAML path of the mapping
// that holds them ("uplink", "amqp"), for error messages.
type Credentials struct {
	Prefix       string
	User         string
	PasswordFile string
	PasswordEnv  string
}

// URLs returns each of raws with the user and password filled in. The
// password is read once, and escaped as a URL needs, so it may hold any
// character. A user or password already in a URL stays unless c sets one.
func (c Credentials) URLs(raws []string) ([]string, error) {
	us := make([]*url.URL, len(raws))
	for i, raw := range raws {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, Bad(c.Prefix+".url", "not a URL: %v", err)
		}
		us[i] = u
	}
	if len(us) == 0 {
		return nil, nil // offline: no password is needed
	}
	var pw string
	var havePW bool
	switch {
	case c.PasswordFile != "":
		p, err := ReadSecret(c.Prefix+".password_file", c.PasswordFile)
		if err != nil {
			return nil, err
		}
		pw, havePW = p, true
	case c.PasswordEnv != "":
		p, ok := os.LookupEnv(c.PasswordEnv)
		if !ok {
			return nil, Bad(c.Prefix+".password_env", "environment variable %s is not set", c.PasswordEnv)
		}
		pw, havePW = p, true
	}
	out := make([]string, len(us))
	for i, u := range us {
		user := c.User
		if user == "" && u.User != nil {
			user = u.User.Username()
		}
		switch {
		case havePW:
			u.User = url.UserPassword(user, pw)
		case c.User != "":
			if p, ok := u.User.Password(); ok {
				u.User = url.UserPassword(user, p)
			} else {
				u.User = url.User(user)
			}
		}
		out[i] = u.String()
	}
	return out, nil
}

// Redact hides the password in a URL for messages and logs.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable URL>"
	}
	return u.Redacted()
}
