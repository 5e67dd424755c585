# A Rack app on Rails' own session middleware, of the kind session-sidecar reads sessions from: the cookie jar
# (ActionDispatch::Cookies) and ActionDispatch::Session::RedisStore (redis-actionpack over redis-rack and
# redis-store), as `config.session_store :redis_store` sets up in a Rails app. The browser holds the public session
# id; Redis holds "<namespace>:2::<sha256 hex of the public id>" (rack's private id).
#
#   GET /login?user=ID&email=E&roles=a,b   reset_session (a new id), then session["user_id"], "email", "roles",
#                                          "login_at"
#   GET /whoami                            the logged-in user, or 401
#   GET /logout                            reset_session: the stored session is deleted
#
# Environment: REDIS_URL (redis://127.0.0.1:6379/0), SESSION_NAMESPACE (session), SESSION_SERIALIZER
# (json | marshal), SESSION_TTL (seconds, 86400), SESSION_KEY (cookie name, _session_id).
# Run: rackup -s webrick -o 127.0.0.1 -p 9292 config.ru

require "json"
require "uri"
require "action_dispatch"
require "redis-actionpack"

redis_url = URI.parse(ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0"))
serializers = {"json" => JSON, "marshal" => Marshal}
serializer = serializers.fetch(ENV.fetch("SESSION_SERIALIZER", "json")) do |name|
  abort "SESSION_SERIALIZER must be json or marshal, not #{name.inspect}"
end
ttl = Integer(ENV.fetch("SESSION_TTL", "86400"))

def json(status, body)
  [status, {"Content-Type" => "application/json"}, [JSON.generate(body)]]
end

app = lambda do |env|
  request = ActionDispatch::Request.new(env)
  session = request.session
  case request.path_info
  when "/login"
    user = request.query_parameters["user"].to_s
    next json(400, error: "user is required") if user.empty?
    request.reset_session # what a Rails login does first: a new session id (no fixation)
    session = request.session
    session["user_id"] = user
    session["email"] = request.query_parameters["email"] if request.query_parameters["email"]
    session["roles"] = request.query_parameters["roles"].to_s.split(",").reject(&:empty?)
    session["login_at"] = Time.now.to_i # an Integer, as apps keep timestamps and ids
    json(200, user: user, session: session.id.public_id)
  when "/whoami"
    next json(401, error: "not logged in") unless session["user_id"]
    json(200, user: session["user_id"], email: session["email"], roles: session["roles"] || [])
  when "/logout"
    request.reset_session
    json(200, logged_out: true)
  else
    json(404, error: "not found")
  end
end

store_options = {
  servers: [{
    host: redis_url.host,
    port: redis_url.port,
    db: redis_url.path.delete_prefix("/").to_i,
    namespace: ENV.fetch("SESSION_NAMESPACE", "session"),
    serializer: serializer
  }],
  key: ENV.fetch("SESSION_KEY", "_session_id"),
  httponly: true,
  same_site: :lax
}
# expire_after is required here: without it Debian's redis-store 1.9 passes the session options object to
# Redis#set, which fails (NoMethodError `key?`) on every write.
abort "SESSION_TTL must be a positive number of seconds" unless ttl.positive?
store_options[:expire_after] = ttl

use ActionDispatch::Cookies
use ActionDispatch::Session::RedisStore, **store_options
run app
