"""Errors of the profile library; each message names the input at fault and the fix."""

from __future__ import annotations

from studio.errors import StudioError


class ProfileError(StudioError):
    """Base class of the profile library's user-facing errors."""


class ProfileNameError(ProfileError):
    """A profile name breaks one of the naming rules."""


class ProfileNotFoundError(ProfileError):
    """No profile has the given name."""


class ProfileExistsError(ProfileError):
    """A profile with that name (ignoring case) already exists."""


class ConsentRequiredError(ProfileError):
    """A profile was to be created without the pictured person's consent being confirmed."""


class NoUsablePhotosError(ProfileError):
    """None of the given photos can be used; the message lists each photo's reason."""


class PhotoNotFoundError(ProfileError):
    """A photo to remove is not in the profile, or its name fits several photos."""


class LibraryError(ProfileError):
    """The library's database cannot be opened, read or upgraded."""


class PhotoWPlusError(ProfileError):
    """e4e cannot encode this photo's face (too small, not found again); the photo keeps the
    reason in place of a W+ and the profile's W+ is made from the others."""
