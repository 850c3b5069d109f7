"""Writes the guardrails corpus: labelled.jsonl (fake secrets and personal data written for
this project, in prose, code and JSON, each labelled with its detector and value) and
near_misses.jsonl (text that looks close and must not be flagged). Deterministic: run
`python3 tests/data/guardrails/make.py` to rewrite both files."""
import base64, json, os, random, string, zlib

rnd = random.Random(20261203)
here = os.path.dirname(os.path.abspath(__file__))
A = string.ascii_letters + string.digits


def tok(n, alphabet=A):
    while True:
        s = "".join(rnd.choice(alphabet) for _ in range(n))
        if any(c.isdigit() for c in s) and any(c.islower() for c in s) and any(c.isupper() for c in s):
            return s


def b64url(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()


def luhn_complete(prefix, length):
    digits = prefix + "".join(rnd.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        n = digits + check
        total = 0
        for i, ch in enumerate(reversed(n)):
            d = int(ch)
            if i % 2 == 1:
                d *= 2
                if d > 9:
                    d -= 9
            total += d
        if total % 10 == 0:
            return n


def iban(country, bban):
    rearranged = bban + country + "00"
    num = int("".join(str(int(c, 36)) for c in rearranged))
    return f"{country}{98 - num % 97:02d}{bban}"


def group4(s):
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


items = []


def add(label, value, *texts):
    for kind, t in texts:
        items.append({"label": label, "kind": kind, "value": value, "text": t.replace("{v}", value)})


for _ in range(2):
    v = "AKIA" + "".join(rnd.choice(string.ascii_uppercase + "234567") for _ in range(16))
    add("aws_access_key_id", v,
        ("prose", "Our deploy broke; the access key is {v} if you want to try it."),
        ("code", 'boto3.client("s3", aws_access_key_id="{v}")'),
        ("json", '{"AccessKeyId": "{v}", "Region": "eu-west-1"}'))
    s = tok(40, A + "/+")
    add("aws_secret_access_key", s,
        ("code", "export AWS_SECRET_ACCESS_KEY={v}"),
        ("prose", "and aws_secret_access_key = {v} in ~/.aws/credentials"),
        ("json", '{"aws_secret_key": "{v}"}'))
    kid = "".join(rnd.choice("0123456789abcdef") for _ in range(40))
    add("gcp_service_account", kid,
        ("json", '{"type": "service_account", "project_id": "shop-prod", "private_key_id": "{v}", "client_email": "ci@shop-prod.iam.gserviceaccount.com"}'))
    k = "AIza" + tok(35, A + "_-")
    add("gcp_api_key", k,
        ("code", 'const MAPS_KEY = "{v}";'),
        ("prose", "Use {v} for the Maps embed."))
    ak = base64.b64encode(rnd.randbytes(64)).decode()
    add("azure_connection_string", ak,
        ("code", 'conn = "DefaultEndpointsProtocol=https;AccountName=shopprod;AccountKey={v};EndpointSuffix=core.windows.net"'),)
    g = "ghp_" + tok(36)
    add("github_token", g,
        ("prose", "I pushed with {v} but it says forbidden"),
        ("code", "git clone https://x-access-token:{v}@github.com/acme/app.git"),
        ("json", '{"github_token": "{v}"}'))
    fg = "github_pat_" + tok(22) + "_" + tok(59)
    add("github_token", fg, ("code", "GH_TOKEN={v} gh pr list"))
    gl = "glpat-" + tok(20, A + "_-")
    add("gitlab_token", gl, ("code", 'curl --header "PRIVATE-TOKEN: {v}" https://gitlab.example.com/api/v4/projects'))
    sl = "xoxb-" + "".join(rnd.choice(string.digits) for _ in range(12)) + "-" + tok(24)
    add("slack_token", sl, ("code", "SLACK_BOT_TOKEN={v}"), ("prose", "the bot token ({v}) expired"))
    hook = "https://hooks.slack.com/services/T" + "".join(rnd.choice(string.ascii_uppercase + string.digits) for _ in range(8)) + "/B" + "".join(rnd.choice(string.ascii_uppercase + string.digits) for _ in range(8)) + "/" + tok(24)
    add("slack_token", hook, ("json", '{"webhook": "{v}"}'))
    st = "sk_live_" + tok(24)
    add("stripe_key", st, ("code", "stripe.api_key = '{v}'"), ("prose", "Stripe secret: {v}"))
    an = "sk-ant-api03-" + tok(93, A + "_-") + "AA"
    add("anthropic_key", an, ("code", "client = anthropic.Anthropic(api_key=\"{v}\")"), ("prose", "Here is my Anthropic key {v} please debug"))
    oa = "sk-proj-" + tok(48, A + "_-")
    add("openai_key", oa, ("code", "OPENAI_API_KEY={v}"), ("json", '{"api_key": "{v}", "model": "gpt-4o"}'),
        ("prose", "why does {v} give 401?"))
    hf = "hf_" + tok(34)
    add("huggingface_token", hf, ("code", "huggingface-cli login --token {v}"))
    jwt = b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url({"sub": str(rnd.randint(10**6, 10**7)), "name": "Jane Roe", "iat": 1733200000}) + "." + tok(43, A + "_-")
    add("jwt", jwt, ("code", "Authorization: Bearer {v}"), ("prose", "the session cookie was {v}; is it expired?"),
        ("json", '{"id_token": "{v}"}'))
    body = "\n".join(base64.b64encode(rnd.randbytes(48)).decode() for _ in range(6))
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    add("private_key", pem, ("prose", "Can you check this key?\n{v}\nIt fails to load."))
    pem2 = "-----BEGIN PRIVATE KEY-----\\n" + "\\n".join(base64.b64encode(rnd.randbytes(48)).decode() for _ in range(4)) + "\\n-----END PRIVATE KEY-----\\n"
    add("private_key", pem2.rstrip("\\n"), ("json", '{"type": "service_account", "private_key": "' + pem2 + '", "client_id": "1"}'))
    pw = tok(14, A + "!#%^&*")
    add("database_url", pw, ("code", "DATABASE_URL=postgres://app:{v}@db.internal:5432/shop"),
        ("prose", "connect with mongodb+srv://admin:{v}@cluster0.example.net/test"))
    sa = tok(12, A + "!@#")
    add("secret_assignment", sa, ("code", 'password = "{v}"'), ("json", '{"username": "svc", "password": "{v}"}'),
        ("code", "client_secret: {v}"), ("prose", "login with pwd={v} for now"))

for pre, n in [("4", 16), ("51", 16), ("37", 15), ("6011", 16)]:
    c = luhn_complete(pre, n)
    add("payment_card", c, ("prose", "Charge it to {v}, exp 09/28."))
    if n == 16:
        add("payment_card", group4(c), ("prose", "my card is {v} and the CVC is on the back"),
            ("json", '{"card": "{v}", "exp": "09/28"}'))

for country, bban in [("DE", "".join(rnd.choice(string.digits) for _ in range(18))),
                      ("GB", "WEST" + "".join(rnd.choice(string.digits) for _ in range(14))),
                      ("FR", "".join(rnd.choice(string.digits) for _ in range(23))),
                      ("NL", "ABNA" + "".join(rnd.choice(string.digits) for _ in range(10)))]:
    i = iban(country, bban)
    add("iban", i, ("prose", "Please wire it to {v} by Friday."))
    add("iban", group4(i), ("json", '{"iban": "{v}", "bic": "COBADEFFXXX"}'))

for _ in range(3):
    ssn = f"{rnd.randint(100, 665):03d}-{rnd.randint(10, 99):02d}-{rnd.randint(1000, 9999):04d}"
    add("us_ssn", ssn, ("prose", "SSN {v}, born 1984"), ("json", '{"ssn": "{v}"}'))

for e in ["jane.roe@example.com", "ops+alerts@shop-prod.example.org", "j.smith@mail.example.co.uk"]:
    add("email", e, ("prose", "Write to {v} with the invoice."), ("code", 'send_mail(to="{v}")'),
        ("json", '{"email": "{v}"}'))

for p in ["(415) 555-0134", "415-555-0172", "+1 212 555 0199", "+44 20 7946 0958", "+49 30 901820"]:
    add("phone_number", p, ("prose", "Call me at {v} after six."), ("json", '{"phone": "{v}"}'))

for _ in range(3):
    t = tok(40, A + "_")
    add("high_entropy_token", t, ("code", "X_INTERNAL_AUTH={v}"), ("prose", "the webhook signing value is {v}"))

near = []


def miss(why, text):
    near.append({"why": why, "text": text})


for _ in range(5):
    u = "%08x-%04x-%04x-%04x-%012x" % (rnd.getrandbits(32), rnd.getrandbits(16), rnd.getrandbits(16), rnd.getrandbits(16), rnd.getrandbits(48))
    miss("uuid", f"request {u} failed; retry with id {u.upper()}")
    h = "%040x" % rnd.getrandbits(160)
    miss("git hash", f"fixed in commit {h} (see also {h[:7]})")
    miss("sha256", f'checksum = "{"%064x" % rnd.getrandbits(256)}"')
png = base64.b64encode(zlib.compress(rnd.randbytes(600))).decode()
miss("base64 image", f'{{"type": "image_url", "image_url": {{"url": "data:image/png;base64,{png}"}}}}'.replace('"image_url": {"url"', '"image": {"src"'))
miss("base64 image in markdown", f"![chart](data:image/png;base64,{png})")
for t in ["Order #1234567890 shipped on 2024-03-15.", "Invoice 2024-000123, PO 4500012345, ticket INC0012345.",
          "Tracking number 1Z999AA10123456784 via UPS.", "Build 20241203.4 at 10:45:33, version 1.13.2.",
          "The server listens on 192.168.10.20:8080 and 10.0.0.1.", "Call extension 4471 or room 301-B.",
          "ISBN 978-3-16-148410-0 and DOI 10.1000/182.", "Serial 4111-1111-11 is a part number, not a card."]:
    miss("numbers", t)
for t in ['password = os.environ["DB_PASSWORD"]', "password = getpass.getpass()", "let password: String = read_line();",
          "if password == confirm_password:", "def login(username, password=None):", 'token = request.headers.get("Authorization")',
          "api_key = settings.OPENAI_API_KEY", "secret: ${{ secrets.DEPLOY_KEY }}", "password: <your password here>",
          "password = ''  # set in .env", 'const token = await getToken();', "DATABASE_URL=postgres://app:${DB_PASS}@db:5432/shop",
          "postgres://localhost:5432/shop", "the token budget is 4096 tokens", "Set `api_key` to your key; the secret is never logged.",
          "passwords must be at least 12 characters", "self.password_hash = hash(password)"]:
    miss("code without a value", t)
for t in ["the_engine_seed_is_the_clients_folded_into_range_or_a_fresh_one", "TollgateGatewayConfigurationLoaderFactory2",
          "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30", "src/protocol/responses/reply.rs:142:17",
          "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGpx7kJ2bQWm1fLz0r8c9YV4sT3uN6hE5dK2oP1aB3cD ci@build",
          '"integrity": "sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs17LhbZVGedAJv8XZ1tvj5FvSg=="',
          "model gemma@1.2.0 and qwen@2.0.0-rc1 are staged", "see https://docs.example.com/api/v1/keys#rotate",
          "email me (at) example dot com", "user@localhost is not an address here"]:
    miss("identifiers and paths", t)

with open(os.path.join(here, "labelled.jsonl"), "w") as f:
    for it in items:
        f.write(json.dumps(it) + "\n")
with open(os.path.join(here, "near_misses.jsonl"), "w") as f:
    for it in near:
        f.write(json.dumps(it) + "\n")
print(len(items), "labelled,", len(near), "near misses")
