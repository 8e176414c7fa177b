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

// URL returns raw with the user and password filled in. The password is
// escaped as the URL needs, so it may hold any character. A user or
// password already in raw stays unless c sets one.
func (c Credentials) URL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", Bad(c.Prefix+".url", "not a URL: %v", err)
	}
	user := c.User
	if user == "" && u.User != nil {
		user = u.User.Username()
	}
	switch {
	case c.PasswordFile != "":
		pw, err := ReadSecret(c.Prefix+".password_file", c.PasswordFile)
		if err != nil {
			return "", err
		}
		u.User = url.UserPassword(user, pw)
	case c.PasswordEnv != "":
		pw, ok := os.LookupEnv(c.PasswordEnv)
		if !ok {
			return "", Bad(c.Prefix+".password_env", "environment variable %s is not set", c.PasswordEnv)
		}
		u.User = url.UserPassword(user, pw)
	case c.User != "":
		if pw, ok := u.User.Password(); ok {
			u.User = url.UserPassword(user, pw)
		} else {
			u.User = url.User(user)
		}
	}
	return u.String(), nil
}

// Redact hides the password in a URL for messages and logs.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable URL>"
	}
	return u.Redacted()
}
