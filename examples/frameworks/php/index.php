<?php
// A PHP login app of the kind session-sidecar reads sessions from: PHP's own sessions, saved in Redis by the
// phpredis extension's session handler. The browser holds PHPSESSID (the bare session id); Redis holds
// "PHPREDIS_SESSION:<id>", the $_SESSION array in the session.serialize_handler format (php or php_serialize).
//
//   GET /login?user=ID&email=E&roles=a,b   session_regenerate_id(true), then $_SESSION['user_id'], email, roles
//   GET /whoami                            the logged-in user, or 401
//   GET /logout                            session_destroy(): the stored session is deleted
//
// Run with PHP's built-in server, this file as the router (the ini settings are what a php.ini would hold):
//   php -d session.save_handler=redis -d session.save_path=tcp://127.0.0.1:6379 \
//       -d session.serialize_handler=php -d session.gc_maxlifetime=1440 -S 127.0.0.1:8080 index.php

declare(strict_types=1);

function answer(int $status, array $body): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($body), "\n";
}

$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);
session_start();

switch ($path) {
    case '/login':
        $user = (string) ($_GET['user'] ?? '');
        if ($user === '') {
            answer(400, ['error' => 'user is required']);
            break;
        }
        session_regenerate_id(true); // a new id at login (no fixation); true deletes the old stored session
        $_SESSION['user_id'] = $user;
        if (isset($_GET['email'])) {
            $_SESSION['email'] = (string) $_GET['email'];
        }
        $_SESSION['roles'] = array_values(array_filter(explode(',', (string) ($_GET['roles'] ?? '')), 'strlen'));
        $_SESSION['login_time'] = time();
        answer(200, ['user' => $user, 'session' => session_id()]);
        break;
    case '/whoami':
        if (!isset($_SESSION['user_id'])) {
            answer(401, ['error' => 'not logged in']);
            break;
        }
        answer(200, ['user' => $_SESSION['user_id'], 'email' => $_SESSION['email'] ?? null,
            'roles' => $_SESSION['roles'] ?? []]);
        break;
    case '/logout':
        $_SESSION = [];
        $params = session_get_cookie_params();
        setcookie(session_name(), '', ['expires' => 1, 'path' => $params['path'], 'domain' => $params['domain'],
            'secure' => $params['secure'], 'httponly' => $params['httponly'], 'samesite' => $params['samesite']]);
        session_destroy();
        answer(200, ['logged_out' => true]);
        break;
    default:
        answer(404, ['error' => 'not found']);
}
