package config

// SecretKind selects which secret files a command reads (a bit set).
type SecretKind uint8

// Secret kinds. A command asks only for what it uses: `run` needs all of
// them, `sync run` only SecretSync, the API clients only SecretAPI, and
// `config check --no-secrets` none.
const (
	SecretAPI     SecretKind = 1 << iota // api.token, api.read_token
	SecretDevices                        // brokers[].password, devices[].password
	SecretSync                           // sync.target.access_key, secret_key

	SecretsNone SecretKind = 0
	SecretsAll             = SecretAPI | SecretDevices | SecretSync
)
