// An Express login app of the kind session-sidecar reads sessions from: express-session keeps the session in
// Redis through connect-redis (key "sess:<id>", JSON), passport puts the user id in it ("passport.user"), and the
// browser holds the signed cookie "connect.sid" = "s:<id>.<HMAC-SHA256 of id, base64 without padding>".
//
//   GET /login?user=ID&email=E&roles=a,b   logs ID in (passport's req.login), stores email and roles too
//   GET /whoami                            the logged-in user, or 401
//   GET /logout                            passport's req.logout: the stored session is deleted
//
// Environment: PORT (default 3000), REDIS_URL (default redis://127.0.0.1:6379/0), SESSION_SECRET,
// SESSION_TTL (seconds, default 86400), SESSION_PREFIX (default "sess:"), COOKIE_NAME (default "connect.sid").
// It listens on 127.0.0.1 only: a demo, not a login service.

"use strict"

const express = require("express")
const session = require("express-session")
const passport = require("passport")
const {RedisStore} = require("connect-redis")
const {createClient} = require("redis")

const port = Number(process.env.PORT || 3000)
const ttl = Number(process.env.SESSION_TTL || 86400)
const secret = process.env.SESSION_SECRET || "change-me: the demo secret of examples/frameworks/express"

// The demo has no user database: the id given to /login is the user. passport stores what serializeUser
// returns under session.passport.user.
passport.serializeUser((user, done) => done(null, user.id))
passport.deserializeUser((id, done) => done(null, {id}))

async function main() {
  const client = createClient({url: process.env.REDIS_URL || "redis://127.0.0.1:6379/0"})
  client.on("error", (err) => console.error("redis:", err.message))
  await client.connect()

  const app = express()
  app.use(
    session({
      name: process.env.COOKIE_NAME || "connect.sid",
      secret,
      store: new RedisStore({client, prefix: process.env.SESSION_PREFIX ?? "sess:", ttl}),
      resave: false,
      saveUninitialized: false,
      cookie: {httpOnly: true, sameSite: "lax", maxAge: ttl * 1000},
    }),
  )
  app.use(passport.session())

  app.get("/login", (req, res, next) => {
    const id = String(req.query.user || "")
    if (!id) return res.status(400).json({error: "user is required"})
    // req.login regenerates the session (a new id: no fixation), then stores passport.user.
    req.login({id}, (err) => {
      if (err) return next(err)
      if (req.query.email) req.session.email = String(req.query.email)
      req.session.roles = String(req.query.roles || "")
        .split(",")
        .filter((role) => role !== "")
      res.json({user: id, session: req.sessionID})
    })
  })

  app.get("/whoami", (req, res) => {
    if (!req.user) return res.status(401).json({error: "not logged in"})
    res.json({user: req.user.id, email: req.session.email ?? null, roles: req.session.roles ?? []})
  })

  app.get("/logout", (req, res, next) => {
    // passport's logout clears passport.user and regenerates the session, which deletes the stored one; the
    // regenerated (anonymous) session would be saved too, so it is destroyed: nothing is left in Redis.
    req.logout((err) => {
      if (err) return next(err)
      req.session.destroy((destroyErr) => {
        if (destroyErr) return next(destroyErr)
        res.clearCookie(process.env.COOKIE_NAME || "connect.sid", {path: "/"})
        res.json({logged_out: true})
      })
    })
  })

  const server = app.listen(port, "127.0.0.1", () => console.log(`express example on http://127.0.0.1:${port}`))
  const stop = () => server.close(() => client.quit().finally(() => process.exit(0)))
  process.on("SIGTERM", stop)
  process.on("SIGINT", stop)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
